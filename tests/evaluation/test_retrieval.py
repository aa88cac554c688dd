"""``passkey`` / ``needle``: haystacks, sample determinism, scoring, grids and heatmaps."""

import json
import math

import pytest

from hicae import ConfigError
from hicae.evaluation import EvalSettings, run_retrieval
from hicae.evaluation.retrieval import FILLER, Haystack, make_samples, parse_depths, parse_lengths

QUIET = EvalSettings(batch_size=4, max_new_tokens=4, progress=False)


def test_parse_lengths_and_depths():
    assert parse_lengths("1k, 4k,16k,128k,100") == [1024, 4096, 16384, 131072, 100]
    assert parse_lengths("1m,1k,1k") == [1 << 20, 1024]
    assert parse_depths("0,0.25,1") == [0.0, 0.25, 1.0]
    for bad in ("", "4x", "-1k", "0"):
        with pytest.raises(ConfigError, match="--lengths"):
            parse_lengths(bad)
    for bad in ("", "1.5", "a"):
        with pytest.raises(ConfigError, match="--depths"):
            parse_depths(bad)


def test_haystack_has_exact_length_and_needle_at_depth(qwen3_tokenizer):
    hay = Haystack(qwen3_tokenizer)
    needle = "The pass key is 71432. Remember it."
    nid = qwen3_tokenizer(" " + needle, add_special_tokens=False)["input_ids"]
    for length in (len(nid), 50, 257, 1000):
        for depth in (0.0, 0.5, 1.0):
            ids = hay.build(length, [(depth, needle)])
            assert len(ids) == length
            at = next(i for i in range(length) if ids[i : i + len(nid)] == nid)
            filler = length - len(nid)
            assert abs(at - depth * filler) <= max(len(f) for f in hay.filler)  # the nearest sentence boundary
    text = qwen3_tokenizer.decode(hay.build(100, [(0.0, needle)]))
    assert text.startswith(" " + needle + " " + FILLER[0]) and "71432" in text
    with pytest.raises(ConfigError, match="cannot even hold"):
        hay.build(3, [(0.5, needle)])


def test_samples_are_deterministic_and_cells_independent(qwen3_tokenizer):
    a = make_samples("passkey", qwen3_tokenizer, [64, 128], [0.0, 1.0], 3, seed=0)
    b = make_samples("passkey", qwen3_tokenizer, [128], [1.0], 3, seed=0)
    c = make_samples("passkey", qwen3_tokenizer, [64, 128], [0.0, 1.0], 3, seed=1)
    assert [(x.ids, x.answer) for x in a] == [(x.ids, x.answer) for x in make_samples("passkey", qwen3_tokenizer, [64, 128], [0.0, 1.0], 3, seed=0)]
    assert [(x.ids, x.answer) for x in a[-3:]] == [(x.ids, x.answer) for x in b]
    assert [x.answer for x in a] != [x.answer for x in c]
    assert all(len(x.ids) == x.length and len(x.answer) == 5 for x in a)
    n = make_samples("needle", qwen3_tokenizer, [200], [0.5], 2, seed=0, distractors=3)
    text = qwen3_tokenizer.decode(n[0].ids)
    assert text.count("special magic numbers for") == 4 and f"is: {n[0].answer}." in text
    assert n[0].question.startswith("What is the special magic number for")


def test_perfect_answers_fill_the_grid(icae_model, monkeypatch):
    tok = icae_model.tokenizer
    expected = {}

    def fake(mem, prompts, max_new_tokens):  # answers with the key of each sample, in order
        return [tok(f"It is {expected.pop(0)}.", add_special_tokens=False)["input_ids"] for _ in prompts]

    samples = make_samples("passkey", tok, [40, 80], [0.0, 0.5, 1.0], 2, seed=0)
    expected = [x.answer for x in samples]
    monkeypatch.setattr(icae_model, "generate_ids", fake)
    res = run_retrieval("passkey", icae_model, QUIET, [40, 80], [0.0, 0.5, 1.0], samples=2)
    assert res.summary["accuracy_memory"] == 1.0
    assert res.summary["grid"]["memory"]["accuracy"] == [[1.0, 1.0]] * 3  # [depth][length]


def test_limit_leaves_empty_cells_as_nan(icae_model, tmp_path):
    from hicae.evaluation import write_report

    res = run_retrieval("passkey", icae_model, EvalSettings(limit=5, max_new_tokens=2, progress=False), [40, 80], [0.0, 1.0], 2)
    g = res.summary["grid"]["memory"]["accuracy"]
    assert res.summary["samples"] == 5 and math.isnan(g[1][1]) and not math.isnan(g[0][1])
    write_report(res, tmp_path, {})
    assert json.loads((tmp_path / "passkey.json").read_text())["summary"]["grid"]["memory"]["accuracy"][1][1] is None


def test_cli_passkey_with_fulltext_writes_grids_and_heatmaps(icae_ckpt, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "passkey", "--checkpoint", icae_ckpt, "--output_dir", out, "--device", "cpu",
                           "--lengths", "48,96", "--depths", "0,0.5,1", "--samples", "2", "--fulltext", "--max_new_tokens", "4",
                           "--no_progress")
    assert code == 0, err
    res = json.loads((out / "passkey.json").read_text())
    s = res["summary"]
    assert s["samples"] == 12 and s["lengths"] == [48, 96] and s["depths"] == [0.0, 0.5, 1.0]
    for src in ("memory", "fulltext"):
        g = s["grid"][src]["accuracy"]
        assert len(g) == 3 and all(len(r) == 2 and all(0 <= v <= 1 for v in r) for r in g)
        assert (out / f"passkey_heatmap_{src}.png").exists()
    rows = [json.loads(x) for x in (out / "passkey_examples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["correct_memory"] in (0.0, 1.0) for r in rows)
    # ICAE stops at the base's window (8192 for the tiny base; the checkpoint's 512 is its training length):
    # longer haystacks need a hierarchical checkpoint
    code, _, err = run_cli("eval", "--task", "passkey", "--checkpoint", icae_ckpt, "--output_dir", out, "--lengths", "16k")
    assert code == 1 and "hierarchical checkpoint" in err and "Traceback" not in err


def test_cli_needle_on_hierarchical_checkpoint_beyond_icae_limit(hier_ckpt, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "needle", "--checkpoint", hier_ckpt, "--output_dir", out, "--device", "cpu",
                           "--lengths", "1k", "--depths", "0,1", "--samples", "1", "--distractors", "1",
                           "--max_slots", "16", "--max_new_tokens", "3", "--no_progress", "--seed", "3")
    assert code == 0, err
    rows = [json.loads(x) for x in (out / "needle_examples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["slots"] <= 16 and r["level"] >= 3 for r in rows)
    assert "| 1k |" in (out / "needle.md").read_text()
