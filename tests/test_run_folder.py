"""A run folder's checkpoints: which are complete, what a resume picks, rotation, clearing a previous run.

Checkpoint folders are built by hand (files named as the Trainer and hicae write them), so each
case costs no training; tests/cli/test_resume_cli.py runs the same through ``hicae pretrain``.
"""

import json
from pathlib import Path

import pytest

from hicae.errors import CheckpointError, ConfigError
from hicae.training.run_folder import (MODEL_FILES, STAGING, TRAINER_STATE, clear_previous_run, commit_checkpoint,
                              complete_checkpoints, previous_run, resolve_resume, resume_flag, rotate)

STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
FILES = (TRAINER_STATE, *MODEL_FILES, *STATE_FILES)


def make_ckpt(root: Path, step: int, drop=(), state=None) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for f in FILES:
        if f not in drop:
            (d / f).write_text("x")
    if TRAINER_STATE not in drop:
        (d / TRAINER_STATE).write_text(state if state is not None else json.dumps({"global_step": step, "train_batch_size": 2}))
    return d


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("yes", True), (True, True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("", False), (None, False), (False, False),
    ("runs/checkpoint-4", Path("runs/checkpoint-4")),
])
def test_resume_flag_words(value, expected):
    assert resume_flag(value) == expected


def test_folder_named_like_a_word_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "true").mkdir()
    with pytest.raises(ConfigError, match=r"also a folder named 'true'; write ./true"):
        resume_flag("true")
    assert resume_flag("./true") == Path("./true")


def test_true_picks_the_newest_complete_checkpoint_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "run"
    make_ckpt(out, 2)
    good = make_ckpt(out, 4)
    make_ckpt(out, 1, drop=("scheduler.pt",))  # older: not worth a note
    no_state = make_ckpt(out, 6, drop=(TRAINER_STATE,))
    no_opt = make_ckpt(out, 8, drop=("optimizer.pt", "rng_state.pth"))
    copied = make_ckpt(out, 10, state=json.dumps({"global_step": 4, "train_batch_size": 2}))
    broken = make_ckpt(out, 12, state="{not json")
    (out / STAGING / "checkpoint-14").mkdir(parents=True)
    r = resolve_resume("True", out)
    assert r.path == good
    assert [(p, why) for p, why in r.skipped] == [
        (no_state, "trainer_state.json: missing"),
        (no_opt, "optimizer.pt: missing; rng_state.pth: missing"),
        (copied, "trainer_state.json: records step 4, but the folder is named checkpoint-10"),
        (broken, "trainer_state.json: not valid JSON (Expecting property name enclosed in double quotes: "
                 "line 1 column 2 (char 1))"),
    ]
    notes = r.notes()
    assert f"resume: skipping {no_opt}: optimizer.pt: missing; rng_state.pth: missing" in notes
    assert f"resume: ignoring {out / STAGING / 'checkpoint-14'}: a save that did not finish" in notes[-1]
    # the override lets a checkpoint lacking only optimizer/scheduler/RNG state count, with a warning
    r = resolve_resume("1", out, allow_partial=True)
    assert r.path == no_opt and r.missing_state == ["optimizer.pt", "rng_state.pth"]
    assert "without optimizer.pt, rng_state.pth (--allow_partial_resume)" in r.notes()[-1]
    assert resolve_resume("false", out) is None and resolve_resume(None, out) is None


def test_true_without_a_complete_checkpoint_names_why(tmp_path):
    out = tmp_path / "run"
    make_ckpt(out, 2, drop=("adapter_model.safetensors",))
    with pytest.raises(ConfigError, match=r"no complete checkpoint in --output_dir .*run to resume from: "
                                          r"checkpoint-2: adapter_model.safetensors: missing"):
        resolve_resume("true", out)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_resume("true", tmp_path / "nothing-here")


@pytest.mark.parametrize("missing", FILES)
def test_a_named_checkpoint_missing_a_file_is_refused_naming_it(tmp_path, missing):
    ck = make_ckpt(tmp_path, 4, drop=(missing,))
    with pytest.raises(CheckpointError) as e:
        resolve_resume(str(ck), tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{ck / missing}: missing")
    if missing in STATE_FILES:  # refused, with the override named; accepted with it, and reported
        assert "--allow_partial_resume" in msg and "differ from an uninterrupted one" in msg
        assert resolve_resume(str(ck), tmp_path, allow_partial=True).missing_state == [missing]
    else:  # never resumable
        assert "not a complete checkpoint" in msg
        with pytest.raises(CheckpointError, match=missing):
            resolve_resume(str(ck), tmp_path, allow_partial=True)


def test_named_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume_from_checkpoint .*nope: no such folder"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_each_process_needs_its_own_rng_state(tmp_path):
    ck = make_ckpt(tmp_path, 2)
    (ck / "rng_state_0.pth").write_text("x")
    with pytest.raises(CheckpointError, match="rng_state_1.pth: missing"):
        resolve_resume(str(ck), tmp_path, rng="rng_state_1.pth")
    assert complete_checkpoints(tmp_path, rng="rng_state_0.pth")[0] == [ck]


def test_rotation_keeps_the_checkpoint_just_saved(tmp_path):
    """A run resumed from checkpoint-2 saves checkpoint-4 beside an older run's checkpoint-6: with
    --save_total_limit 1, transformers' rotation would keep checkpoint-6 (highest step) and delete
    the one just saved."""
    for s in (2, 4, 6):
        make_ckpt(tmp_path, s)
    rotate(tmp_path, 1, keep=[tmp_path / "checkpoint-4", None])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-4"]
    make_ckpt(tmp_path, 6)
    rotate(tmp_path, None, keep=[])  # no limit: nothing deleted
    assert len(list(tmp_path.iterdir())) == 2


def test_commit_replaces_a_folder_whole(tmp_path):
    final = make_ckpt(tmp_path, 4)
    (final / "stale.txt").write_text("from an earlier run")
    staged = make_ckpt(tmp_path / STAGING, 4)
    commit_checkpoint(staged, final)
    assert not (final / "stale.txt").exists() and (final / TRAINER_STATE).is_file()
    assert list((tmp_path / STAGING).iterdir()) == []


def test_previous_run_is_found_and_cleared_leaving_other_files(tmp_path):
    assert previous_run(tmp_path / "new") == [] and previous_run(tmp_path) == []
    make_ckpt(tmp_path, 4)
    (tmp_path / "hicae_config.json").write_text("{}")
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    old = previous_run(tmp_path)
    assert old == ["checkpoint-4", "hicae_config.json", "runs"]
    clear_previous_run(tmp_path, old)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
