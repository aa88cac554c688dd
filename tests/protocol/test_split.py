"""hicae.protocol.split and .passages: held out by document, deterministically; passages and evaluation texts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hicae.protocol.passages import document_passages, eval_texts, token_counter
from hicae.protocol.sources import Document
from hicae.protocol.split import hash_held_out, proxy_test_indices, split_documents

ROOT = Path(__file__).resolve().parents[2]


def docs(domain: str, n: int, proxy: bool = False) -> list[Document]:
    return [Document(domain, f"d{i}", f"Document {i}. " * 20, f"{domain}:d{i}", i if proxy else None, n if proxy else None)
            for i in range(n)]


@pytest.mark.parametrize("domain,proxy", [("en_kernel_docs", False), ("en_python_docs", True)])
def test_held_out_by_document_and_deterministic(domain, proxy):
    ds = docs(domain, 200, proxy)
    train, test = split_documents(ds, seed=0, fraction=0.1)
    ids_train, ids_test = {d.doc_id for d in train}, {d.doc_id for d in test}
    assert not ids_train & ids_test and len(ids_train | ids_test) == 200  # every document on exactly one side
    assert 8 <= len(test) <= 35
    again = split_documents(list(reversed(ds)), seed=0, fraction=0.1)[1]
    if not proxy:  # the hash rule ignores order and the other documents
        assert {d.doc_id for d in again} == ids_test
        assert {d.doc_id for d in split_documents(ds[:50], 0, 0.1)[1]} == {i for i in ids_test if int(i[1:]) < 50}
    assert {d.doc_id for d in split_documents(ds, seed=1, fraction=0.1)[1]} != ids_test  # the seed matters


def test_translations_share_their_side():
    en = Document("en_debian_reference", "1.2", "x" * 50, "debian-reference:1.2")
    keys = [f"debian-reference:{i}.{j}" for i in range(1, 13) for j in range(1, 9)]
    held = {k for k in keys if hash_held_out(k, 0, 0.1)}
    assert held and len(held) < len(keys)
    both = [Document("en_debian_reference", k, "x", k) for k in keys] + [Document("zh_debian_reference", k, "x", k) for k in keys]
    test = split_documents(both, 0, 0.1)[1]
    assert {d.doc_id for d in test if d.domain == "en_debian_reference"} == {d.doc_id for d in test if d.domain == "zh_debian_reference"} == held
    assert en.split_key == "debian-reference:1.2"


def test_proxy_rule_is_the_shipped_adapters_split():
    """Same test documents as experiments/proxy.py's split_documents (the shipped adapter never trained on them)."""
    spec = importlib.util.spec_from_file_location("hicae_bench_proxy_split", ROOT / "experiments" / "proxy.py")
    proxy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = proxy  # its dataclasses look their module up
    spec.loader.exec_module(proxy)
    texts = [f"doc {i}" for i in range(497)]
    _, test = proxy.split_documents(texts, 0.1, 0)
    assert {texts.index(t) for t in test} == proxy_test_indices(497, 0.1, 0)


def test_training_passages_fit_and_cut_at_boundaries(qwen3_tokenizer):
    count = token_counter(qwen3_tokenizer)
    text = ("The first paragraph has a sentence. It has another one! And a third?\n\n"
            + " ".join(f"word{i}" for i in range(120)) + "\n\n" + "这是中文句子。" * 30 + "\n\n" + "无标点" * 60)
    pcs = document_passages(text, count, max_tokens=24, min_tokens=4)
    ps = [p for p, _ in pcs]
    assert ps and [c for _, c in pcs] == count(ps) and max(count(ps)) <= 24
    assert ps[0].startswith("The first paragraph has a sentence.")
    assert all(not p.startswith(("ord", "d1")) for p in ps)  # English cut at whitespace, never inside a word
    zh = [p for p in ps if "这是" in p]
    assert zh and all(p.endswith("。") for p in zh)  # Chinese cut after a full stop
    assert "".join(p.replace("\n", "") for p in ps if "无标点" in p).count("无标点") == 60  # nothing lost
    assert document_passages("tiny", count, 24, 4) == []  # under min_tokens


def test_eval_texts_exact_length_per_doc_packing_determinism(qwen3_tokenizer):
    enc = lambda t: qwen3_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    long_docs = [Document("en_kernel_docs", f"long{i}", "\n\n".join(f"Paragraph {j} of document {i} says something "
                                                                        f"long enough to count." for j in range(20)),
                          f"k{i}") for i in range(5)]
    short = [Document("en_fortunes", f"f{i}", f"Fortune number {i}.", f"f{i}") for i in range(12)]
    ts = eval_texts(long_docs, qwen3_tokenizer, 16, n=8, seed=0, per_doc=2)
    assert len(ts) == 8 and all(len(enc(t.text)) == 16 for t in ts)
    per = {}
    for t in ts:
        per[t.doc_ids[0]] = per.get(t.doc_ids[0], 0) + 1
        assert t.text.startswith("Paragraph")  # windows start at a paragraph
    assert max(per.values()) == 2 and len(per) == 4
    assert [t.text for t in eval_texts(long_docs, qwen3_tokenizer, 16, 8, 0, 2)] == [t.text for t in ts]
    assert [t.text for t in eval_texts(long_docs, qwen3_tokenizer, 16, 8, 1, 2)] != [t.text for t in ts]
    packed = eval_texts(short, qwen3_tokenizer, 12, n=3, seed=0)
    assert packed and all(len(t.doc_ids) > 1 and len(enc(t.text)) == 12 for t in packed)
    assert len({d for t in packed for d in t.doc_ids}) == sum(len(t.doc_ids) for t in packed)  # each fortune once
