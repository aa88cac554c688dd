"""A training run's ``--output_dir``: complete checkpoints, what to resume from, and never mixing two runs.

A checkpoint ``checkpoint-N`` is complete when it holds every file a resume reads: the Trainer's
``trainer_state.json`` (recording step N), hicae's trained weights and configs, and the state that
makes a resumed run equal an uninterrupted one (``optimizer.pt``, ``scheduler.pt``, the RNG state).
``ICAETrainer`` writes each checkpoint into ``.hicae-saving/checkpoint-N`` and renames it into place
when every file is written (``commit_checkpoint``), so a kill during a save leaves no
``checkpoint-N``; the checks here also cover folders made otherwise (an older hicae, a copy that
missed a file), so that resume never picks one and never fails with a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..io.checkpoint import ADAPTER_FILE, EMBED_FILE
from ..io.checkpoint_meta import ADAPTER_CONFIG_FILE, CONFIG_FILE
from ..errors import CheckpointError, ConfigError

log = logging.getLogger("hicae")

STAGING = ".hicae-saving"  # where checkpoints are written before they are renamed into place
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.json"  # hicae writes the TrainingArguments as JSON (no pickle)
MODEL_FILES = (CONFIG_FILE, ADAPTER_CONFIG_FILE, ADAPTER_FILE, EMBED_FILE, TRAINING_ARGS)
# What a run leaves in --output_dir besides its checkpoints: the final model, the loss curve, tensorboard logs.
RUN_ENTRIES = (*MODEL_FILES, "loss_history.json", "loss_curve.png", TRAINER_STATE, "runs", STAGING)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR naming
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0", "")
PARTIAL_OVERRIDE = "--allow_partial_resume"


def rng_file(world_size: int, process_index: int) -> str:
    """The RNG state file the Trainer writes for (and reads back into) this process."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{process_index}.pth"


def _has_optimizer(ckpt: Path) -> bool:
    # as transformers looks for it: optimizer.pt, optimizer.bin (accelerate/FSDP) or a sharded optimizer_* folder
    return ((ckpt / "optimizer.pt").is_file() or (ckpt / "optimizer.bin").is_file()
            or any(p.is_dir() and p.name.startswith("optimizer") for p in ckpt.iterdir()))


def missing_state(ckpt: Path, rng: str = "rng_state.pth", scaler: bool = False) -> list[str]:
    """Files of an exact resumption that ``ckpt`` lacks (without them a resumed run departs from an uninterrupted one)."""
    missing = [] if _has_optimizer(ckpt) else ["optimizer.pt"]
    missing += [f for f in ("scheduler.pt", rng, *(["scaler.pt"] if scaler else [])) if not (ckpt / f).is_file()]
    return missing


def checkpoint_step(ckpt: Path) -> int | None:
    m = _CHECKPOINT.match(ckpt.name)
    return int(m.group(1)) if m else None


def checkpoint_problems(ckpt: Path, need_state: bool = True, rng: str = "rng_state.pth",
                        scaler: bool = False) -> list[tuple[str, str]]:
    """``(file, what is wrong)`` for each reason ``ckpt`` cannot be resumed from; empty when complete."""
    problems = [(f, "missing") for f in (TRAINER_STATE, *MODEL_FILES) if not (ckpt / f).is_file()]
    if need_state:
        problems += [(f, "missing") for f in missing_state(ckpt, rng, scaler)]
    if (ckpt / TRAINER_STATE).is_file():
        try:
            state = json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))
            step = state["global_step"] if isinstance(state, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return problems + [(TRAINER_STATE, f"not valid JSON ({e})")]
        except KeyError:
            step = None
        if not isinstance(step, int):
            problems.append((TRAINER_STATE, "records no global_step"))
        elif checkpoint_step(ckpt) not in (None, step):
            problems.append((TRAINER_STATE, f"records step {step}, but the folder is named {ckpt.name}"))
        if isinstance(state, dict):
            problems += [(TRAINER_STATE, why) for why in state_field_problems(state)]
    return problems


# Fields transformers' resume does arithmetic on: valid JSON without them (an older or hand-edited file)
# ends in a TypeError deep in the Trainer (compare_trainer_and_checkpoint_args: None // int).
_NEEDED_INTS = ("train_batch_size",)


def state_field_problems(state: dict) -> list[str]:
    """What in a parsed trainer_state.json transformers cannot resume from: fields it computes with that are
    missing or not integers, and fields ``TrainerState`` does not know (its constructor refuses them)."""
    from transformers import TrainerState

    known = {f.name for f in dataclasses.fields(TrainerState)}
    out = [f"records no {k} (an integer)" for k in _NEEDED_INTS
           if not isinstance(state.get(k), int) or isinstance(state.get(k), bool)]
    out += [f"unknown field {k!r}" for k in state if k not in known]
    return out


def describe_problems(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{f}: {why}" for f, why in problems)


def checkpoints(out: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``out``, by step, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(out: str | os.PathLike, need_state: bool = True, rng: str = "rng_state.pth",
                         scaler: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(complete checkpoints oldest first, [(incomplete checkpoint, why)])`` of a run folder."""
    good, bad = [], []
    for ckpt in checkpoints(out):
        problems = checkpoint_problems(ckpt, need_state, rng, scaler)
        if problems:
            bad.append((ckpt, describe_problems(problems)))
        else:
            good.append(ckpt)
    return good, bad


def unfinished_saves(out: str | os.PathLike) -> list[Path]:
    """Checkpoints whose save was cut off (left in the staging folder by a kill during the save)."""
    staging = Path(out) / STAGING
    return sorted(p for p in staging.iterdir()) if staging.is_dir() else []


def resume_flag(value: str | bool | os.PathLike | None) -> bool | Path:
    """``--resume_from_checkpoint``: False (do not resume), True (the newest complete checkpoint), or a folder.

    ``true``/``yes``/``1`` and ``false``/``no``/``0`` (any case) are words, as for the other boolean
    flags; a folder so named is refused as ambiguous (give it as ``./true``).
    """
    if value is None or value is False:
        return False
    if value is True:
        return True
    text = os.fspath(value)
    word = text.strip().lower()
    if word in TRUE_WORDS + FALSE_WORDS:
        if word and Path(text).is_dir() and text == Path(text).name:
            raise ConfigError(f"--resume_from_checkpoint {text}: there is also a folder named {text!r}; write "
                              f"./{text} to resume from it, or rename it")
        return word in TRUE_WORDS
    return Path(text)


@dataclass
class Resume:
    """What a run resumes from, and what a user should be told about it."""

    path: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints passed over, and why
    unfinished: list[Path] = field(default_factory=list)  # saves cut off by a kill
    missing_state: list[str] = field(default_factory=list)  # allowed by allow_partial

    def notes(self) -> list[str]:
        out = [f"resume: skipping {p}: {why}" for p, why in self.skipped]
        out += [f"resume: ignoring {p}: a save that did not finish (the run was stopped during it)" for p in self.unfinished]
        if self.missing_state:
            out.append(f"WARNING: resuming from {self.path} without {', '.join(self.missing_state)} ({PARTIAL_OVERRIDE}): "
                       "the optimizer, schedule or random state start afresh, so this run will differ from an "
                       "uninterrupted one")
        return out

    def report(self) -> None:
        for line in self.notes():
            log.warning("hicae: %s", line)


def resolve_resume(value: str | bool | os.PathLike | None, output_dir: str | os.PathLike,
                   allow_partial: bool = False, rng: str = "rng_state.pth", scaler: bool = False) -> Resume | None:
    """The checkpoint ``--resume_from_checkpoint value`` names, checked; None when not resuming.

    ``True`` takes the newest complete checkpoint of ``output_dir`` (newer incomplete ones are
    skipped, with the reason). A folder must be complete. A checkpoint lacking only the state of an
    exact resumption (optimizer, scheduler, RNG) is refused unless ``allow_partial``.
    """
    flag = resume_flag(value)
    if flag is False:
        return None
    if flag is True:
        good, bad = complete_checkpoints(output_dir, need_state=not allow_partial, rng=rng, scaler=scaler)
        if not good:
            why = f": {'; '.join(f'{p.name}: {w}' for p, w in bad)}" if bad else ""
            raise ConfigError(f"--resume_from_checkpoint {value}: no complete checkpoint in --output_dir {output_dir} "
                              f"to resume from{why}; leave the flag out (with --overwrite_output_dir) to start over")
        chosen = good[-1]
        skipped = [(p, why) for p, why in bad if checkpoint_step(p) > checkpoint_step(chosen)]
        found = Resume(chosen, skipped, unfinished_saves(output_dir))
    else:
        if not flag.is_dir():
            raise ConfigError(f"--resume_from_checkpoint {flag}: no such folder (give a checkpoint-N folder, or true "
                              "for the newest complete one in --output_dir)")
        problems = checkpoint_problems(flag, need_state=not allow_partial, rng=rng, scaler=scaler)
        if problems:
            (first, why), rest = problems[0], problems[1:]
            more = f" (also {describe_problems(rest)})" if rest else ""
            state_only = all(f not in (TRAINER_STATE, *MODEL_FILES) for f, _ in problems)
            hint = (f"resuming without it would restart the optimizer, schedule or random state, and the run would "
                    f"differ from an uninterrupted one; pass {PARTIAL_OVERRIDE} to resume anyway" if state_only else
                    "not a complete checkpoint (a save that did not finish, or a copy that missed files); "
                    "--resume_from_checkpoint true picks the newest complete one in --output_dir")
            raise CheckpointError(f"{flag / first}: {why}{more}: {hint}")
        found = Resume(flag)
    if allow_partial:
        found.missing_state = missing_state(found.path, rng, scaler)
    return found


def previous_run(out: str | os.PathLike) -> list[str]:
    """Names of the entries of ``out`` that a training run wrote (its checkpoints, final model, logs)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return [p.name for p in checkpoints(out)] + [n for n in RUN_ENTRIES if (out / n).exists()]


def clear_previous_run(out: str | os.PathLike, names: Iterable[str]) -> None:
    """Remove a previous run's entries (``previous_run``) from ``out``; other files stay."""
    for name in names:
        p = Path(out) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def commit_checkpoint(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint into place; an older folder of that name is replaced whole."""
    old = None
    if final.exists():
        old = staged.parent / f"replaced-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def rotate(out: Path, limit: int | None, keep: Iterable[str | os.PathLike | None]) -> None:
    """Delete the oldest checkpoints beyond ``limit`` (``--save_total_limit``), never one in ``keep``.

    Unlike transformers' rotation (which keeps the highest step or the newest by mtime), the
    checkpoint just saved is always kept, even when a resumed run saves below older, higher-step
    folders.
    """
    if not limit or limit <= 0:
        return
    protected = {Path(k).resolve() for k in keep if k}
    ckpts = checkpoints(out)
    excess = len(ckpts) - max(limit, len(protected))
    for ckpt in ckpts:
        if excess <= 0:
            break
        if ckpt.resolve() not in protected:
            shutil.rmtree(ckpt, ignore_errors=True)
            excess -= 1
