"""experiments/long_qa.py: every condition in a dry run on tiny checkpoints; the baselines' contexts exactly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hicae.demo.assets import load_qwen3_tokenizer
from hicae.longqa.contexts import bm25_ids, chunks, last_n_ids
from hicae.longqa.documents import build_long_docs, parse_lengths
from hicae.longqa.scoring import contains, f1

ROOT = Path(__file__).resolve().parents[2]

EN = [f"Section {i}. The driver number {i} registers its device with the bus, then the probe routine "
      f"allocates buffers of size {i * 64} and maps registers of the controller. Errors during probe "
      f"release every buffer taken so far, in reverse order, before returning." for i in range(12)]
_POOL = "系统管理员首先更新软件包列表然后检查磁盘空间是否足够接着下载新的内核映像并安装到启动分区最后重新计算机确认服务正常运行"
# seeded characters: distinct documents, so cloze cues are unique
ZH = ["".join(_POOL[(i * 31 + k * k * 7 + k) % len(_POOL)] for k in range(60)) + "。" for i in range(12)]


def _script():
    spec = importlib.util.spec_from_file_location("long_qa", ROOT / "experiments" / "long_qa.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in EN + ZH))
    return p


def test_last_n_is_exactly_the_last_n_tokens():
    ids = list(range(100))
    assert last_n_ids(ids, 7) == list(range(93, 100)) and last_n_ids(ids, 500) == ids and last_n_ids(ids, 0) == []


def test_bm25_context_holds_the_planted_chunk_within_budget():
    tok = load_qwen3_tokenizer()
    filler = " ".join(f"The weather report number {i} mentions mild wind and light rain." for i in range(40))
    planted = " To rebuild the initramfs run update-initramfs with the u option."
    ids = tok(filler[:1200] + planted + " " + filler[1200:], add_special_tokens=False)["input_ids"]
    got, taken = bm25_ids(ids, "How do you rebuild the initramfs?", 20, 16, tok)
    parts = chunks(ids, 16)
    assert len(got) == 20 and taken == sorted(taken)
    assert any("initramfs" in tok.decode(parts[i]) for i in taken)
    assert got == [t for i in taken for t in parts[i]][:20]


def test_long_documents_have_the_exact_length():
    tok = load_qwen3_tokenizer()
    docs, notes = build_long_docs([(f"d{i}", t) for i, t in enumerate(EN)], "en", [50, 300, 10**6], 2, tok, 0)
    assert [d.tokens for d in docs] == [50, 50, 300, 300] and len(notes) == 1 and "1000000" in notes[0]
    for d in docs:
        assert abs(len(tok(d.text, add_special_tokens=False)["input_ids"]) - d.tokens) <= 1
    assert parse_lengths("2k,8k,100k") == [2000, 8000, 100000]


def test_scores():
    assert contains("It says: Electronic Form.", "electronic form", "en") == 1.0
    assert contains("别的答案", "下载新的", "zh") == 0.0 and contains("是“下载新的”。", "下载新的", "zh") == 1.0
    assert f1("electronic form", "electronic form", "en") == 1.0


def test_dry_run_every_condition_and_resume(tmp_path, corpus, icae_ckpt, hier_ckpt):
    out = tmp_path / "lq"
    argv = ["--dry_run", "--checkpoint", str(icae_ckpt), "--hier_checkpoint", str(hier_ckpt), "--corpus", str(corpus),
            "--out_dir", str(out), "--full_max_tokens", "200"]
    assert _script().main(argv) == 0
    rep = json.loads((out / "long_qa.json").read_text())
    conds = {"memory_flat", "memory_hier", "memory_retrieved", "memory_retrieved_each", "memory_decoded", "full",
             "last_n", "bm25", "none"}
    for lang in ("en", "zh"):
        assert set(rep["summary"][lang]) == {"96", "160"}
        for cells in rep["summary"][lang].values():
            assert set(cells) == conds
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    for r in rows:
        if r["condition"] in ("last_n", "bm25", "memory_decoded"):
            assert r["context_tokens"] <= r["budget"] and r["budget"] > 0
        if r["condition"] == "memory_decoded":  # its budget is its own memory's size, as memory_flat's
            flat = next(x for x in rows if x["doc"] == r["doc"] and x["condition"] == "memory_flat")
            assert r["budget"] == r["slots"] == flat["slots"] and r["decoded_tokens"] > 0
        if r["condition"] == "memory_hier":
            assert r["slots"] <= 16
        if r["condition"] == "memory_retrieved":  # --retrieve_slots 8 (DRY): two segments of k = 4 read
            flat = next(x for x in rows if x["doc"] == r["doc"] and x["condition"] == "memory_flat")
            assert r["context_tokens"] == r["budget"] == r["slots"] == 8 and r["memory_slots"] == flat["slots"]
            assert len(r["chunks"]) == 2 and r["chunks"] == sorted(r["chunks"]) and r["retrieve_from"] == "text"
        if r["condition"] == "memory_retrieved_each":  # the same picks, one k = 4 segment read at a time
            same = next(x for x in rows if x["doc"] == r["doc"] and x["q"] == r["q"]
                        and x["condition"] == "memory_retrieved")
            assert r["chunks"] == same["chunks"] and r["budget"] == r["slots"] == 8 and r["context_tokens"] == 4
            assert [c["segment"] for c in r["candidates"]] == r["chunks"] and r["ttft_s"] == r["answer_s"]
            best = max(r["candidates"], key=lambda c: c["logprob"])
            assert r["chosen"] == best["segment"] and r["answer"] == best["answer"]
            assert r["gold_retrieved"] == any(c["gold_segment"] for c in r["candidates"])
    # the full text of 160 tokens does not fit --full_max_tokens 200 with the chat template: n/a, not a score
    assert rep["summary"]["en"]["160"]["full"]["n"] == 0 and rep["summary"]["en"]["160"]["full"]["na"] > 0
    md = (out / "long_qa.md").read_text()
    assert "## en" in md and "## zh" in md and "BM25 chunks" in md and "n/a" in md
    data = (out / "rows.jsonl").read_bytes()
    assert _script().main(argv) == 0 and (out / "rows.jsonl").read_bytes() == data  # nothing redone


def test_retrieved_segments_from_the_memory_read_back(tmp_path, corpus, icae_ckpt):
    out = tmp_path / "rb"
    argv = ["--dry_run", "--checkpoint", str(icae_ckpt), "--corpus", str(corpus), "--out_dir", str(out),
            "--conditions", "memory_retrieved,bm25", "--languages", "en", "--retrieve_from", "read_back",
            "--retrieve_slots", "5"]
    assert _script().main(argv) == 0
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["condition"] == "memory_retrieved"]
    assert mine and all(r["retrieve_from"] == "read_back" and r["prefix_s"] > 0 for r in mine)
    assert all(r["slots"] == r["context_tokens"] == 4 and len(r["chunks"]) == 1 for r in mine)  # one whole segment
    # the baseline's N is the slots the decoder read, not the whole memory
    assert all(r["budget"] == 4 for r in rows if r["condition"] == "bm25")


def test_memory_answers_are_the_same_with_the_prefix_computed_once(tmp_path, corpus, icae_ckpt):
    rows = {}
    for flag in ("--prefix_cache", "--no-prefix_cache"):
        out = tmp_path / flag.strip("-")
        argv = ["--dry_run", "--checkpoint", str(icae_ckpt), "--corpus", str(corpus), "--out_dir", str(out),
                "--conditions", "memory_flat", "--languages", "en", flag]
        assert _script().main(argv) == 0
        rows[flag] = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    cached, uncached = rows["--prefix_cache"], rows["--no-prefix_cache"]
    assert len(cached) == len(uncached) > 0
    assert [r["answer"] for r in cached] == [r["answer"] for r in uncached]
    assert all(r["prefix_s"] > 0 for r in cached) and not any("prefix_s" in r for r in uncached)
    assert "prefix s" in (tmp_path / "prefix_cache" / "long_qa.md").read_text()


def test_read_back_reconstructs_each_segment_as_if_compressed_alone(icae_model):
    from hicae.layout import segment_lengths
    from hicae.longqa.decoded import read_back, segment_memory

    m = icae_model
    ids = m.tokens.text_ids([" ".join(EN[:3])])[0]
    with __import__("torch").no_grad():
        mem = m.compress_ids([ids])
        got = read_back(m, mem, rows=3)  # several batches
        cfg = m.icae_config
        lens = segment_lengths(len(ids), cfg.mem_size, cfg.compression_rate, cfg.segmentation)
        starts = [sum(lens[:j]) for j in range(len(lens))]
        alone = m.compress_ids([ids[a : a + n] for a, n in zip(starts, lens)])  # each segment its own text
        want = [t for row in m.reconstruct_ids(alone, max_new_tokens=max(lens) + 8) for t in row]
    assert len(segment_memory(m, mem)) == len(lens) > 3
    assert got == want
