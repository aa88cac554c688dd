"""``ae``: reconstruction scores, breakdowns, files, on tiny ICAE and hierarchical checkpoints."""

import json

import pytest

from hicae.evaluation import EvalSettings, read_texts, run_ae
from hicae.tokens import tokenize

from .conftest import TEXTS, write_jsonl

QUIET = EvalSettings(batch_size=2, progress=False)


def test_cli_writes_json_markdown_examples_and_plot(icae_ckpt, text_file, tmp_path, run_cli):
    out = tmp_path / "out"
    code, stdout, err = run_cli("eval", "--task", "ae", "--checkpoint", icae_ckpt, "--data", text_file, "--output_dir", out,
                                "--device", "cpu", "--limit", "4", "--batch_size", "3")
    assert code == 0, err
    res = json.loads((out / "ae.json").read_text())
    s = res["summary"]
    assert s["n"] == 4 and 0 <= s["bleu"] <= 100 and 0 <= s["token_accuracy"] <= 1 and 0 <= s["exact_match"] <= 1
    assert res["meta"]["model"]["hierarchical"] is False and res["meta"]["settings"]["limit"] == 4
    assert sum(b["n"] for b in res["breakdowns"]["by_ratio"].values()) == 4 and "by_level" not in res["breakdowns"]
    rows = [json.loads(x) for x in (out / "ae_examples.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rows] == [f"{text_file}:{i}" for i in range(1, 5)]
    assert all(r["ratio"] == r["tokens"] / r["slots"] for r in rows)
    md = (out / "ae.md").read_text()
    assert "| all | 4 |" in md and "![ae_by_ratio](ae_by_ratio.png)" in md
    assert (out / "ae_by_ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(stdout)["summary"]["n"] == 4
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files


def test_hierarchical_breakdown_by_level(hier_ckpt, tmp_path, run_cli):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS] + [{"text": " ".join(TEXTS)}])
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "ae", "--checkpoint", hier_ckpt, "--data", f, "--output_dir", out,
                           "--device", "cpu", "--max_slots", "8", "--max_new_tokens", "8", "--no_progress")
    assert code == 0, err
    res = json.loads((out / "ae.json").read_text())
    levels = res["breakdowns"]["by_level"]
    assert len(levels) >= 2 and sum(b["n"] for b in levels.values()) == 6
    rows = [json.loads(x) for x in (out / "ae_examples.jsonl").read_text().splitlines()]
    assert all(r["slots"] <= 8 for r in rows) and max(r["level"] for r in rows) >= 2
    assert res["meta"]["model"]["max_slots"] == 8 and (out / "ae_by_level.png").exists()


def test_perfect_reconstruction_scores_100(icae_model, text_file, monkeypatch):
    records = read_texts(text_file)
    refs = iter(tokenize(icae_model.tokenizer, [r.text for r in records]))
    monkeypatch.setattr(icae_model, "reconstruct_ids", lambda mem, max_new_tokens=None: [next(refs) for _ in range(len(mem))])
    res = run_ae(icae_model, records, QUIET)
    assert res.summary["bleu"] == pytest.approx(100.0) and res.summary["exact_match"] == 1.0
    assert res.summary["token_accuracy"] == 1.0 and all(r["bleu"] == pytest.approx(100.0) for r in res.examples)


def test_deterministic(icae_model, text_file):
    records = read_texts(text_file)
    a, b = run_ae(icae_model, records, QUIET), run_ae(icae_model, records, EvalSettings(batch_size=5, progress=False))
    assert a.examples == b.examples  # and independent of the batch size


def test_user_errors_exit_1_with_file_and_line(icae_ckpt, text_file, tmp_path, run_cli):
    base = ("eval", "--task", "ae", "--checkpoint", icae_ckpt, "--output_dir", tmp_path / "o", "--device", "cpu")
    code, _, err = run_cli(*base, "--data", text_file, "--max_slots", "8")
    assert code == 1 and "needs a hierarchical checkpoint" in err and "Traceback" not in err
    code, _, err = run_cli(*base, "--data", text_file, "--model_max_length", "8")
    assert code == 1 and f"{text_file}:1 has 14 tokens" in err and "--overlong truncate" in err
    assert run_cli(*base, "--data", text_file, "--model_max_length", "8", "--overlong", "truncate", "--limit", "1")[0] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": }\n')
    code, _, err = run_cli(*base, "--data", bad)
    assert code == 1 and f"{bad}:2: malformed JSON" in err and "Traceback" not in err


def test_english_and_chinese_reported_apart(icae_ckpt, tmp_path, run_cli):
    texts = ["The quick brown fox jumps over the lazy dog.", "床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "--task", "ae", "--checkpoint", icae_ckpt, "--data", f, "--output_dir", out,
                           "--device", "cpu", "--max_new_tokens", "8", "--no_progress")
    assert code == 0, err
    res = json.loads((out / "ae.json").read_text())
    langs = res["breakdowns"]["by_language"]
    assert {k: v["n"] for k, v in langs.items()} == {"en": 1, "zh": 2}
    rows = [json.loads(x) for x in (out / "ae_examples.jsonl").read_text().splitlines()]
    assert [r["language"] for r in rows] == ["en", "zh", "zh"]
    assert "By language" in (out / "ae.md").read_text()
