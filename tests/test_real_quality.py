"""experiments/real_quality.py: every stage's code path at toy sizes on a tiny base, and resumption.

Slow (it needs the Debian corpus of the proxy, fetched with apt-get download, and ~1 min); CI runs
it beside the proxy's quick mode.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "real_quality.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, qwen3_tokenizer):
    from hicae.demo.tiny import tiny_model

    path = tmp_path_factory.mktemp("base")
    tiny_model("qwen3").save_pretrained(path)
    qwen3_tokenizer.save_pretrained(path)
    return path


def run(out: Path, base: Path, *extra: str) -> str:
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry_run", "--model", str(base), "--out_dir", str(out),
                        "--threads", "1", *extra], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_stages_curve_resume_and_report(tiny_base, tmp_path):
    out = tmp_path / "real"
    log = run(out, tiny_base)
    rep = json.loads((out / "real.json").read_text())
    assert set(rep["stages"]) == {"4x", "8x", "16x"}
    assert [c["step"] for c in rep["stages"]["4x"]["curve"]] == [2, 4]
    for stage in ("4x", "8x"):
        f = rep["stages"][stage]["final"]
        assert set(f) == {"en", "zh"} and set(f["zh"]["ppl"]) == {"none", "memory", "full", "truncated"}
    assert rep["stages"]["16x"]["final"]["en"]["ae"]["n"] >= 1
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG" and "| 4x |" in (out / "real.md").read_text()

    # a resume with more steps continues from the newest complete checkpoint; an incomplete one is skipped
    ck = out / "work" / "4x"
    newest = max(ck.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    broken = ck / "checkpoint-5"
    shutil.copytree(newest, broken)
    (broken / "optimizer.pt").unlink()
    log = run(out, tiny_base, "--stages", "4x", "--steps_4x", "6")
    assert f"skipping incomplete {broken} (optimizer.pt: missing" in log
    assert f"4x: 4 of 6 steps done, resuming from {newest}" in log
    rep = json.loads((out / "real.json").read_text())
    assert [c["step"] for c in rep["stages"]["4x"]["curve"]] == [2, 4, 6] and rep["stages"]["4x"]["final_step"] == 6
    assert rep["stages"]["8x"]["final_step"] == 2  # other stages' results are kept

    # a new machine without the run's folder starts the 4x stage from a committed checkpoint, not from zero:
    # a source trained from another seed (other random LoRA A), then a seed-0 run warm-started from it
    src = tmp_path / "src"
    run(src, tiny_base, "--stages", "4x", "--steps_4x", "2", "--seed", "1", "--skip_final_eval")
    warm = tmp_path / "warm"
    log = run(warm, tiny_base, "--stages", "4x", "--steps_4x", "2", "--warm_start", str(src / "work" / "4x"),
              "--skip_final_eval")
    assert f"4x: warm start from {src / 'work' / '4x'}" in log
    from safetensors.torch import load_file

    def lora_a(folder: Path) -> torch.Tensor:
        t = load_file(folder / "adapter_model.safetensors")
        return torch.cat([v.float().flatten() for k, v in sorted(t.items()) if "lora_A" in k])

    start, fresh = lora_a(src / "work" / "4x"), lora_a(out / "work" / "4x")
    assert (start - fresh).abs().max() > 0.05  # the seeds' random LoRA A differ
    assert (lora_a(warm / "work" / "4x" / "checkpoint-1") - start).abs().max() < 0.01  # one step from the source
    assert json.loads((warm / "real.json").read_text())["stages"]["4x"]["warm_start"] == str(src / "work" / "4x")
