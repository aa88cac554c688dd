"""JSONL reading and the training collator."""

import json
import os
import random

import pytest
import torch

from hicae import ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.training.data import FINETUNE_FIELDS, PRETRAIN_FIELDS, Collator, JsonlDataset, RehearsalMix, iter_jsonl
from hicae.errors import DataError
from hicae.layout import AE, FT, IGNORE, LM, MEM, SLOT, segment_lengths
from hicae.tokens import SpecialTokens


@pytest.fixture(scope="module")
def tok():
    return load_qwen3_tokenizer()


def write(path, lines):
    path.write_bytes(b"".join(l if isinstance(l, bytes) else (l + "\n").encode() for l in lines))
    return path


def test_dataset_reads_records_lazily_and_skips_blank_lines(tmp_path):
    f = write(tmp_path / "a.jsonl", [json.dumps({"text": "one"}), "", "  ", json.dumps({"text": "two", "x": 1})])
    ds = JsonlDataset(f, PRETRAIN_FIELDS)
    assert len(ds) == 2
    assert ds[1]["text"] == "two" and ds[1]["where"] == f"{f}:4" and ds[1]["index"] == 1
    assert ds[0]["text"] == "one"
    assert [r["text"] for _, r in iter_jsonl(f, PRETRAIN_FIELDS)] == ["one", "two"]
    assert len(JsonlDataset(f, PRETRAIN_FIELDS, limit=1)) == 1


@pytest.mark.parametrize(
    "line, fields, message",
    [
        ('{"text": "ok"', PRETRAIN_FIELDS, "malformed JSON"),
        ('["text"]', PRETRAIN_FIELDS, "expected a JSON object"),
        ('{"txt": "a"}', PRETRAIN_FIELDS, "missing field 'text'"),
        ('{"text": 3}', PRETRAIN_FIELDS, "field 'text' must be a string"),
        ('{"text": "   "}', PRETRAIN_FIELDS, "field 'text' is empty"),
        ('{"input": "a", "prompt": "b"}', FINETUNE_FIELDS, "missing field 'answer'"),
        (b'{"text": "caf\xe9"}\n', PRETRAIN_FIELDS, "invalid UTF-8"),
        # valid JSON, but a lone surrogate is no character: a tokenizer would fail on it mid-training
        ('{"text": "abc \\ud800 def"}', PRETRAIN_FIELDS, r"field 'text' is not valid Unicode: a lone surrogate '\\ud800'"),
        ('{"input": "a", "prompt": "b", "answer": "\\udfff"}', FINETUNE_FIELDS, "field 'answer' is not valid Unicode"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, fields, message):
    good = json.dumps({f: "x" for f in fields})
    f = write(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(DataError, match=message) as e:
        JsonlDataset(f, fields)
    assert f"{f}:3" in str(e.value)


def test_utf8_byte_order_mark_is_skipped(tmp_path):
    recs = [{"text": "first é"}, {"text": "second"}]
    plain = write(tmp_path / "plain.jsonl", [json.dumps(r, ensure_ascii=False) for r in recs])
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # as Windows tools write UTF-8
    ds = JsonlDataset(bom, PRETRAIN_FIELDS)
    assert [ds[i]["text"] for i in range(len(ds))] == [r["text"] for r in recs]
    assert [r for _, r in iter_jsonl(bom, PRETRAIN_FIELDS)] == recs
    # LongBench is told from PwC by the first record: a BOM must not hide its fields
    from hicae.evaluation.records import read_qa

    lb = tmp_path / "lb.jsonl"
    lb.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"context": "c", "input": "q", "answers": ["a"]}) + "\n").encode())
    assert read_qa(lb)[0].answers == ["a"]
    # an invalid byte after the mark is still named at its offset in the line
    bad = write(tmp_path / "bad.jsonl", [b"\xef\xbb\xbf" + b'{"text": "\xff"}\n'])
    with pytest.raises(DataError, match=f"{bad}:1: invalid UTF-8 \\(byte 0xff at offset 13\\)"):
        JsonlDataset(bad, PRETRAIN_FIELDS)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        JsonlDataset(tmp_path / "nope.jsonl", PRETRAIN_FIELDS)
    with pytest.raises(DataError, match="no records"):
        JsonlDataset(write(tmp_path / "empty.jsonl", [""]), PRETRAIN_FIELDS)


def _collator(tok, mode="pretrain", lm_ratio=0.0, **cfg):
    config = ICAEConfig(**{"mem_size": 4, "compression_rate": 2, "lora_r": 4, **cfg})
    return Collator(tok, SpecialTokens.from_tokenizer(tok), config, mode, lm_ratio, seed=1)


def test_pretrain_ae_batch_layout(tok):
    col = _collator(tok)
    texts = ["Hello world, this is a longer text for several segments.", "Hi"]
    recs = [{"index": i, "where": f"f:{i}", "text": t} for i, t in enumerate(texts)]
    b = col(recs)
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    nseg = [len(segment_lengths(len(x), 4, 2)) for x in ids]
    assert b["segments_per_example"].tolist() == nseg
    assert b["enc_ids"].shape[0] == sum(nseg)
    assert (b["enc_ids"] == MEM).sum(1).tolist() == [4] * sum(nseg)
    assert b["task"].tolist() == [0, 0]
    for i, x in enumerate(ids):
        row = b["dec_ids"][i][b["dec_mask"][i].bool()].tolist()
        assert row == [SLOT] * (4 * nseg[i]) + [AE] + x + [tok.eos_token_id]
        labels = b["dec_labels"][i][b["dec_mask"][i].bool()].tolist()
        assert labels == [IGNORE] * (4 * nseg[i] + 1) + x + [tok.eos_token_id]
    assert (b["dec_labels"][~b["dec_mask"].bool()] == IGNORE).all()


def test_pretrain_lm_split_is_seeded_and_leaves_tokens(tok):
    col = _collator(tok, lm_ratio=1.0, min_tokens_for_lm=4, leave_tokens_for_lm=2)
    text = " ".join(f"word{i}" for i in range(40))
    ids = tok(text, add_special_tokens=False).input_ids
    b1 = col([{"index": 7, "text": text}])
    b2 = col([{"index": 7, "text": text}])
    assert torch.equal(b1["dec_ids"], b2["dec_ids"])  # same record -> same split
    assert b1["task"].tolist() == [1]
    row = b1["dec_ids"][0].tolist()
    lm_at = row.index(LM)
    cont = row[lm_at + 1 :]
    ctx_len = len(ids) - len(cont)
    assert ids[ctx_len:] == cont and len(ids) / 2 <= ctx_len <= len(ids) - 5
    assert b1["enc_seg_lens"].sum().item() == ctx_len  # only the head is compressed
    labels = b1["dec_labels"][0].tolist()[lm_at + 1 :]
    assert labels == [IGNORE, IGNORE] + cont[2:]
    # too short for LM: falls back to AE
    assert col([{"index": 7, "text": "short text"}])["task"].tolist() == [0]


def test_finetune_batch_has_chat_layout_and_answer_loss(tok):
    col = _collator(tok, mode="finetune")
    b = col([{"index": 0, "input": "The sky is blue.", "prompt": "What colour?", "answer": "Blue."}])
    row = b["dec_ids"][0].tolist()
    assert FT in row and row.count(SLOT) == 4 * b["segments_per_example"][0].item()
    labelled = [x for x in b["dec_labels"][0].tolist() if x != IGNORE]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert labelled == tok("Blue.", add_special_tokens=False).input_ids + [im_end]
    assert b["task"].tolist() == [2]


def test_finetune_batch_trains_rehearsal_texts_as_pretraining_does(tok):
    """A {'text'} record in fine-tuning (RehearsalMix) is an AE example, its row equal to pretraining's."""
    text = "The probe routine allocates the buffer."
    ft = {"index": 0, "input": "The sky is blue.", "prompt": "What colour?", "answer": "Blue."}
    b = _collator(tok, mode="finetune")([ft, {"index": 3, "text": text}])
    alone = _collator(tok)([{"index": 3, "text": text}])
    assert b["task"].tolist() == [2, 0]
    n = int(alone["dec_mask"][0].sum())
    assert b["dec_ids"][1, :n].tolist() == alone["dec_ids"][0, :n].tolist()
    assert b["dec_labels"][1, :n].tolist() == alone["dec_labels"][0, :n].tolist()


def test_rehearsal_mix_appends_its_share_of_texts_cycled(tmp_path):
    recs = write(tmp_path / "ft.jsonl", [json.dumps({"input": f"in {i}", "prompt": "p", "answer": "a"})
                                         for i in range(6)])
    texts = write(tmp_path / "t.jsonl", [json.dumps({"text": f"text {i}"}) for i in range(2)])
    mix = RehearsalMix(JsonlDataset(recs, FINETUNE_FIELDS), JsonlDataset(texts, PRETRAIN_FIELDS), 0.25)
    assert len(mix) == 8  # 6 records, 2 texts: a quarter
    assert [mix[i]["input"] for i in range(6)] == [f"in {i}" for i in range(6)]
    assert [mix[i]["text"] for i in (6, 7)] == ["text 0", "text 1"]
    mix = RehearsalMix(JsonlDataset(recs, FINETUNE_FIELDS), JsonlDataset(texts, PRETRAIN_FIELDS), 0.5)
    assert len(mix) == 12 and mix[11]["text"] == "text 1" and mix[10]["text"] == "text 0"  # cycled
    with pytest.raises(IndexError):
        mix[12]
    for bad in (0.0, 1.0):
        with pytest.raises(DataError, match="rehearsal_ratio"):
            RehearsalMix(JsonlDataset(recs, FINETUNE_FIELDS), JsonlDataset(texts, PRETRAIN_FIELDS), bad)


def test_collator_overlong_policy(tok):
    long = " ".join(["token"] * 50)
    rec = {"index": 0, "where": "data.jsonl:9", "text": long}
    with pytest.raises(DataError, match=r"data.jsonl:9.*model_max_length=10.*--overlong truncate"):
        _collator(tok, model_max_length=10)([rec])
    b = _collator(tok, model_max_length=10, overlong="truncate")([rec])
    assert b["enc_seg_lens"].sum().item() == 10


def test_limit_zero_is_refused(tmp_path):
    f = write(tmp_path / "a.jsonl", [json.dumps({"text": "one"}), json.dumps({"text": "two"})])
    for bad in (0, -1):
        with pytest.raises(DataError, match="nothing to read"):
            JsonlDataset(f, PRETRAIN_FIELDS, limit=bad)
    assert len(JsonlDataset(f, PRETRAIN_FIELDS, limit=1)) == 1


def test_file_rewritten_after_indexing_is_a_data_error(tmp_path):
    lines = [json.dumps({"text": f"record number {i}"}) for i in range(4)]
    f = write(tmp_path / "a.jsonl", lines)
    ds = JsonlDataset(f, PRETRAIN_FIELDS)
    assert ds[3]["text"] == "record number 3"
    # rewritten with other content (another size): refused, naming the file, whatever the record
    write(f, [json.dumps({"text": "new"})] + lines)
    for i in (0, 3):
        with pytest.raises(DataError, match="changed since it was indexed") as e:
            ds[i]
        assert str(f) in str(e.value)


def test_record_bytes_changed_in_place_are_caught(tmp_path):
    lines = [json.dumps({"text": f"record number {i}"}) for i in range(4)]
    f = write(tmp_path / "a.jsonl", lines)
    ds = JsonlDataset(f, PRETRAIN_FIELDS)
    st = os.stat(f)
    # same size and modification time (a coarse clock, a copy that keeps times): the bytes differ
    write(f, lines[:2] + [json.dumps({"text": "record NUMBER 2"})] + lines[3:])
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size
    assert ds[1]["text"] == "record number 1"  # untouched records still read
    with pytest.raises(DataError, match="line 3 has other bytes"):
        ds[2]


def test_file_replaced_by_rename_is_caught_by_an_open_handle(tmp_path):
    lines = [json.dumps({"text": f"record number {i}"}) for i in range(4)]
    f = write(tmp_path / "a.jsonl", lines)
    ds = JsonlDataset(f, PRETRAIN_FIELDS)
    ds[0]  # the handle is open on the old file now
    new = write(tmp_path / "b.jsonl", [json.dumps({"text": "x"})] * 9)
    os.replace(new, f)
    with pytest.raises(DataError, match="changed since it was indexed"):
        ds[1]


def test_lm_cut_uniform_is_the_reference_rule(tok):
    """``lm_cut='uniform'``: ICAE v2's text_extraction + pretrain_tokenize_function for a text within the window."""
    min_lm = 4
    col = _collator(tok, lm_ratio=1.0, min_tokens_for_lm=min_lm, lm_cut="uniform")
    ids = list(range(100, 130))  # L = 30 token ids
    L, kinds = len(ids), set()
    for index in range(200):
        # the reference, written out with the collator's per-record generator:
        rng = random.Random(1 * 1_000_003 + index)
        assert rng.random() < 1.0  # lm_ratio = 1: the LM branch
        r = rng.randint(0, L - 1)
        a, b = ids[: r + 1], ids[r + 1 :]
        want = ("lm", a, b) if len(b) > min_lm else ("ae", a, a)  # too short a continuation: AE on the head
        assert col.split(ids, index) == want
        kinds.add((want[0], len(a) < L / 2))
    # both objectives, and LM heads shorter than half the text (never drawn by 'second_half')
    assert kinds == {("lm", True), ("lm", False), ("ae", False)}
    default = _collator(tok, lm_ratio=1.0, min_tokens_for_lm=min_lm)
    for index in range(50):  # 'second_half': the head holds at least half, no AE on a head
        task, head, cont = default.split(ids, index)
        assert task == "lm" and L / 2 <= len(head) <= L - min_lm - 1 and head + cont == ids


def test_lm_without_task_token_as_the_reference_default(tok):
    col = _collator(tok, lm_ratio=1.0, min_tokens_for_lm=4, leave_tokens_for_lm=2, add_special_token_for_lm=False)
    text = " ".join(f"word{i}" for i in range(40))
    ids = tok(text, add_special_tokens=False).input_ids
    b = col([{"index": 7, "text": text}])
    n = int(b["segments_per_example"][0]) * 4
    row, labels = b["dec_ids"][0].tolist(), b["dec_labels"][0].tolist()
    cont = row[n:]
    assert row[:n] == [SLOT] * n and LM not in row and cont == ids[len(ids) - len(cont):]
    assert labels == [IGNORE] * (n + 2) + cont[2:]


def test_lm_cut_uniform_in_the_hierarchy_falls_back_to_ae_within_the_head(tok):
    from hicae import HierarchyConfig

    config = ICAEConfig(mem_size=4, compression_rate=2, lora_r=4, min_tokens_for_lm=4, lm_cut="uniform")
    col = Collator(tok, SpecialTokens.from_tokenizer(tok), config, "pretrain", 1.0, seed=1,
                   hierarchy=HierarchyConfig(levels=2, group_size=2))
    ids = list(range(100, 140))  # L = 40
    seen = set()
    for index in range(100):
        rng = random.Random(1 * 1_000_003 + index)
        rng.random()
        s = rng.randint(1, len(ids))  # the head is ids[:s]
        task, ctx, tgt = col.split_hierarchical(ids, index)
        if len(ids) - s > 4:
            assert (task, ctx, tgt) == ("lm", ids[:s], ids[s:])
        else:  # AE on a window inside the head
            assert task == "ae" and ctx == tgt and ctx[0] >= 100 and ctx[-1] < 100 + s
        seen.add(task)
    assert seen == {"lm", "ae"}
