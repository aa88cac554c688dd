"""Training runs are never lost or mixed (issue 11 point 2): kill -9 during a save, resume, second runs.

One uninterrupted run (6 steps, a checkpoint every 2) is the reference; one subprocess is killed
with SIGKILL inside the Trainer's save of checkpoint-4; everything else runs in-process.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hicae.training.run_folder import STAGING
from test_distributed import launch, setup, trained  # noqa: F401  (the DDP tests' launcher and equal-length records)

from .conftest import PASSAGES, tiny_args

ARGS = ("--max_steps", "6", "--save_steps", "2", "--seed", "3")

# Kill the process (SIGKILL, as `kill -9`) inside the Trainer's save of checkpoint-4: after the
# weights, optimizer, scheduler and RNG state are written, before trainer_state.json.
KILL_AT_4 = """
import os, signal
from hicae.training.trainer import ICAETrainer
_rng = ICAETrainer._save_rng_state
def _save_rng_state(self, output_dir):
    _rng(self, output_dir)
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
ICAETrainer._save_rng_state = _save_rng_state
from hicae.cli.main import main
main(sys.argv[1:])
"""


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def snapshot(d):
    return {str(f): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
    """``full``: the uninterrupted run; ``train``: its data."""
    from hicae.cli.main import main

    d = tmp_path_factory.mktemp("resume")
    train = d / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in PASSAGES))
    assert main(["pretrain", *tiny_args(base_dir, d / "full", train, *ARGS)]) == 0
    return d


def test_kill_during_a_save_then_resume_true_reproduces_the_uninterrupted_run(runs, base_dir, tmp_path, run_cli,
                                                                                caplog):
    part = tmp_path / "part"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", "import sys\n" + KILL_AT_4, "pretrain",
                        *tiny_args(base_dir, part, runs / "train.jsonl", *ARGS)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    # checkpoint-4 is absent, not incomplete: its files wait in the staging folder
    assert sorted(p.name for p in part.glob("checkpoint-*")) == ["checkpoint-2"]
    staged = part / STAGING / "checkpoint-4"
    assert (staged / "optimizer.pt").is_file() and not (staged / "trainer_state.json").exists()

    code, _, err = run_cli("pretrain", *tiny_args(base_dir, part, runs / "train.jsonl", *ARGS,
                                                  "--resume_from_checkpoint", "True"))
    assert code == 0, err
    assert f"ignoring {staged}: a save that did not finish" in caplog.text
    full = runs / "full"
    assert_same_weights(trained(full), trained(part))
    for s in (2, 4, 6):
        assert_same_weights(trained(full / f"checkpoint-{s}"), trained(part / f"checkpoint-{s}"))
    # the same loss at every step, to the last digit
    assert json.loads((part / "loss_history.json").read_text()) == json.loads((full / "loss_history.json").read_text())
    assert not (part / STAGING).exists()  # the next save of step 4 replaced the unfinished one


def test_second_run_into_a_run_folder_is_refused_and_overwrite_starts_clean(runs, base_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    shutil.copytree(runs / "full", out)
    before = snapshot(out)
    for extra in ((), ("--resume_from_checkpoint", "false")):  # false (or no flag) does not resume
        code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, runs / "train.jsonl", "--max_steps", "2", *extra))
        assert code == 1 and "Traceback" not in err
        assert f"--output_dir {out} holds a previous run (checkpoint-2, checkpoint-4, checkpoint-6" in err
        assert "--resume_from_checkpoint true" in err and "--overwrite_output_dir" in err
    assert snapshot(out) == before
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, runs / "train.jsonl", "--max_steps", "2",
                                                  "--save_steps", "2", "--overwrite_output_dir", "true"))
    assert code == 0, err
    # nothing of the old run is left beside the new one; the user's own file stays
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "notes.txt").read_text() == "mine"
    assert [s for s, _ in json.loads((out / "loss_history.json").read_text())["loss"]] == [1, 2]


def test_overwrite_never_deletes_an_input(runs, base_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    shutil.copytree(runs / "full", out)
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, runs / "train.jsonl", "--max_steps", "2",
                                                  "--overwrite_output_dir", "true", "--restore_from",
                                                  str(out / "checkpoint-6")))
    assert code == 1 and f"--restore_from {out / 'checkpoint-6'} lies in {out / 'checkpoint-6'}" in err
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, runs / "train.jsonl", "--overwrite_output_dir", "true",
                                                  "--resume_from_checkpoint", "true"))
    assert code == 1 and "--overwrite_output_dir would delete --resume_from_checkpoint" in err
    assert (out / "checkpoint-6" / "optimizer.pt").is_file()


def test_resuming_an_older_checkpoint_beside_newer_ones_is_refused(runs, base_dir, tmp_path, run_cli):
    """Continuing from checkpoint-2 while checkpoint-4/6 are there would leave the abandoned continuation's
    checkpoints beside the new ones (rotation keeps the highest steps; `true` would pick them later)."""
    out = tmp_path / "out"
    shutil.copytree(runs / "full", out)
    before = snapshot(out)
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, runs / "train.jsonl", *ARGS,
                                                  "--resume_from_checkpoint", str(out / "checkpoint-2")))
    assert code == 1 and "Traceback" not in err
    assert f"is older than checkpoint-4, checkpoint-6 in --output_dir {out}: move or delete them" in err
    assert snapshot(out) == before


def test_missing_optimizer_is_refused_unless_allowed(runs, base_dir, tmp_path, run_cli, caplog):
    out = tmp_path / "out"
    ck = out / "checkpoint-4"
    shutil.copytree(runs / "full" / "checkpoint-4", ck)
    (ck / "optimizer.pt").unlink()
    argv = tiny_args(base_dir, out, runs / "train.jsonl", *ARGS, "--resume_from_checkpoint", str(ck))
    code, _, err = run_cli("pretrain", *argv)
    assert code == 1 and "Traceback" not in err
    assert f"{ck / 'optimizer.pt'}: missing" in err and "pass --allow_partial_resume" in err
    code, _, err = run_cli("pretrain", *argv, "--allow_partial_resume", "true")
    assert code == 0, err
    assert f"WARNING: resuming from {ck} without optimizer.pt" in caplog.text
    # a fresh AdamW state: the run departs from the uninterrupted one, as the warning said
    assert not torch.equal(trained(out)["mem_embeddings"], trained(runs / "full")["mem_embeddings"])


def _reshape_a_moment(f):
    state = torch.load(f, weights_only=True)
    state["state"][0]["exp_avg"] = state["state"][0]["exp_avg"][:1]
    torch.save(state, f)


def _edit_state(f, drop=None, **fields):
    """Valid JSON that transformers cannot resume from (an older or hand-edited trainer_state.json)."""
    state = json.loads(f.read_text())
    state.pop(drop, None)
    f.write_text(json.dumps({**state, **fields}))


DAMAGE = {  # name: (file, how it is damaged, what the one-line error says)
    "no trainer state": ("trainer_state.json", lambda f: f.unlink(), "trainer_state.json: missing"),
    "trainer state not JSON": ("trainer_state.json", lambda f: f.write_text("{"), "trainer_state.json: not valid JSON"),
    "trainer state without a field": ("trainer_state.json", lambda f: _edit_state(f, drop="train_batch_size"),
                                      "trainer_state.json: records no train_batch_size (an integer)"),
    "trainer state with a null field": ("trainer_state.json", lambda f: _edit_state(f, train_batch_size=None),
                                        "trainer_state.json: records no train_batch_size (an integer)"),
    "trainer state with an unknown field": ("trainer_state.json", lambda f: _edit_state(f, batch=2),
                                            "trainer_state.json: unknown field 'batch'"),
    "truncated optimizer": ("optimizer.pt", lambda f: f.write_bytes(f.read_bytes()[:200]), "cannot read it"),
    "optimizer of other shapes": ("optimizer.pt", _reshape_a_moment, "does not fit this model's trained parameters"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_checkpoints_are_one_line_errors_naming_the_file(runs, base_dir, tmp_path, run_cli, case):
    name, damage, message = DAMAGE[case]
    ck = tmp_path / "out" / "checkpoint-4"
    shutil.copytree(runs / "full" / "checkpoint-4", ck)
    damage(ck / name)
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, ck.parent, runs / "train.jsonl", *ARGS,
                                                  "--resume_from_checkpoint", str(ck)))
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hicae pretrain: error: {ck / name}") and message in line, line


def test_best_checkpoint_and_rotation_name_final_folders(runs, base_dir, tmp_path, run_cli):
    """Checkpoints are written under the staging folder: the best one must still be recorded (and
    kept by --save_total_limit) under its final name."""
    out = tmp_path / "out"
    code, _, err = run_cli("pretrain", *tiny_args(base_dir, out, runs / "train.jsonl", "--max_steps", "6",
                                                  "--save_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
                                                  "--validation_file", str(runs / "train.jsonl"),
                                                  "--load_best_model_at_end", "true", "--save_total_limit", "1"))
    assert code == 0, err
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best == str(out / f"checkpoint-{state['best_global_step']}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted({"checkpoint-6", os.path.basename(best)})
    assert not (out / STAGING).exists()


@pytest.mark.slow  # two 2-process launches, ~1 min on 2 cores
def test_ddp_checkpoints_are_complete_and_resume_true_reproduces_the_run(setup, tmp_path):
    """Under DDP every process writes its RNG state into the staged checkpoint before it is renamed."""
    base, data = setup
    args = ("--max_steps", "4", "--save_steps", "2", "--seed", "3")
    full, part = tmp_path / "full", tmp_path / "part"
    proc = launch("pretrain", *tiny_args(base, full, data, *args))
    assert proc.returncode == 0, proc.stderr[-4000:]
    for s in (2, 4):
        assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= {
            p.name for p in (full / f"checkpoint-{s}").iterdir()}
    # as if killed after step 2's save: resume the newest complete checkpoint under DDP
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoint-4")
    (part / "adapter_model.safetensors").unlink()
    proc = launch("pretrain", *tiny_args(base, part, data, *args, "--resume_from_checkpoint", "true"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_weights(trained(full), trained(part))
