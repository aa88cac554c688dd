"""``hicae pretrain`` under DDP: two CPU processes (gloo), started by ``accelerate launch`` with
configs/accelerate/cpu_2proc.yaml, train exactly like one process on the same global batch.

Why the comparison can be exact: the loss is a mean over a batch's labelled tokens, and DDP
averages the processes' gradients. The mean of per-process means equals the mean over the global
batch only when every process has as many labelled tokens, so all records here have the same
token count (AE only: every example has the same layout). Then the runs differ only in the order
of floating-point sums (observed: < 1e-6 after three AdamW steps). With records of different
lengths, DDP weights each process's tokens by 1/(its token count), a (small) difference from
the single-process loss that is inherent to per-batch token means, not a hicae bug.

FSDP (configs/accelerate/cpu_2proc_fsdp.yaml: per-layer FSDP2, src/hicae/training/fsdp.py) is held to the
same comparison, and its checkpoints must be full tensors that load in one process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli.conftest import tiny_args
from safetensors.torch import load_file

from hicae.cli.main import main
from hicae.demo.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc_fsdp.yaml"
COMMON = ("--max_steps", "3", "--seed", "3", "--save_strategy", "no")
WORDS = "alpha beta gamma delta river stone cloud green quick brown lazy fox dog".split()
TOKENS = 12  # every record


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen3_tokenizer):
    """A tiny Qwen3 + tokenizer saved as a model folder, and 8 records of exactly TOKENS tokens each."""
    d = tmp_path_factory.mktemp("ddp")
    base = d / "base"
    tiny_model("qwen3", initializer_range=0.5).save_pretrained(base)
    qwen3_tokenizer.save_pretrained(base)
    rng, texts = random.Random(0), []
    while len(texts) < 8:
        t = " ".join(rng.choice(WORDS) for _ in range(TOKENS))
        if len(qwen3_tokenizer(t, add_special_tokens=False)["input_ids"]) == TOKENS and t not in texts:
            texts.append(t)
    data = d / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return base, data


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    """The one-process run on the global batch (4 records a step) that the two-process runs must equal."""
    base, data = setup
    out = tmp_path_factory.mktemp("single")
    assert main(["pretrain", *tiny_args(base, out, data, *COMMON, "--per_device_train_batch_size", "4")]) == 0
    return out


def launch(*argv: str, launcher: list[str] | None = None, timeout: int = 300, config: Path = CONFIG) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = launcher or [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    return subprocess.run([*launcher, "-m", "hicae.cli.main", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def trained(d: Path) -> dict[str, torch.Tensor]:
    return {**load_file(d / "adapter_model.safetensors"), **load_file(d / "icae_embeddings.safetensors")}


def history(d: Path) -> dict[str, list[float]]:
    return json.loads((d / "loss_history.json").read_text())


def assert_same_run(two: Path, one: Path) -> None:
    """Same final trained tensors (to float32 summation order) and the same logged losses."""
    a, b = trained(two), trained(one)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k  # full tensors, not one process's shard
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max().item())
    ha, hb = history(two), history(one)  # {"loss": [[step, value], ...], ...}
    assert [s for s, _ in ha["loss"]] == [s for s, _ in hb["loss"]] == [1, 2, 3]
    assert [v for _, v in ha["loss"]] == pytest.approx([v for _, v in hb["loss"]], rel=1e-5)  # the same global batches
    # per-objective logs are summed over the processes (AE only: ae_loss is the loss; rounded to 4 places)
    assert [v for _, v in ha["ae_loss"]] == pytest.approx([v for _, v in ha["loss"]], abs=1e-3)


def test_two_processes_equal_one_on_the_same_global_batch(setup, single, tmp_path):
    base, data = setup
    # per_device_train_batch_size 2 on each of 2 processes, vs 4 in one process (tiny_args' 2 is overridden)
    proc = launch("pretrain", *tiny_args(base, tmp_path / "ddp", data, *COMMON))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(tmp_path / "ddp", single)


def test_fsdp_two_processes_equal_one_and_save_full_checkpoints(setup, single, tmp_path):
    """Per-layer FSDP2 with gradient checkpointing: the run equals the one-process run, and the
    checkpoints it writes (final and intermediate) hold full tensors that load in one process."""
    base, data = setup
    out = tmp_path / "fsdp"
    args = tiny_args(base, out, data, *COMMON, "--save_strategy", "steps", "--save_steps", "2",
                     "--gradient_checkpointing", "true")
    proc = launch("pretrain", *args, config=FSDP_CONFIG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "hicae: per-layer FSDP2 over 2 processes (2 layer groups and a root group)" in proc.stderr
    assert (out / "checkpoint-2" / "optimizer.bin").is_file()  # the FSDP optimizer state; no full base model
    assert not list((out / "checkpoint-2").glob("pytorch_model_fsdp*"))
    assert_same_run(out, single)
    from hicae import ICAE

    for d in (out, out / "checkpoint-2"):
        model = ICAE.from_pretrained(str(d))  # strict: every tensor there, of its full shape
        got = {**model.trained_tensors()}
        want = trained(d)
        assert all(torch.equal(got[k].cpu(), want[k]) for k in want)
    assert model.compress("alpha beta gamma").slots[0].shape == (4, 64)


def test_hierarchical_training_runs_under_ddp(tmp_path, setup):
    """Batches with non-tensor entries (the hierarchy's token lists) and parameters unused in some steps."""
    base, _ = setup
    texts = [" ".join(f"w{(i * 7 + j) % 40}" for i in range(60)) for j in range(8)]
    f = tmp_path / "long.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "hier"
    proc = launch("pretrain", *tiny_args(base, out, f, "--max_steps", "2", "--save_strategy", "no", "--hierarchical",
                                         "--levels", "3", "--max_slots", "16", "--model_max_length", "32",
                                         "--lm_ratio", "0.5", "--min_tokens_for_lm", "4"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [s for s, _ in history(out)["loss"]] == [1, 2]
    assert "level_embeddings" in load_file(out / "icae_embeddings.safetensors")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check concerns machines without GPUs")
def test_launch_without_use_cpu_is_refused(setup, tmp_path):
    """Without --use_cpu, transformers forms no process group on a CPU machine: each process would train alone."""
    base, data = setup
    args = tiny_args(base, tmp_path / "x", data, "--max_steps", "1")
    i = args.index("--use_cpu")
    del args[i : i + 2]
    proc = launch("pretrain", *args, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc_per_node", "2"])
    assert proc.returncode != 0
    assert "hicae pretrain: error: launched as 2 processes" in proc.stderr and "--use_cpu true" in proc.stderr
    assert not (tmp_path / "x" / "adapter_model.safetensors").exists()
