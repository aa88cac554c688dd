"""``hicae pretrain`` and ``hicae finetune``: ICAE training through transformers' Trainer.

``--config recipe.yaml`` reads flags from a recipe (see configs/recipes/); flags on the command
line override it. Flags: the seed's quick-start flags (``--model_name_or_path --output_dir --train_file
--validation_file --fixed_mem_size --lora_r``), ICAE's method settings (``ICAEConfig``), and every
``TrainingArguments`` flag (learning rate, steps, epochs, batch size, accumulation, bf16, gradient
checkpointing, logging/eval/save steps, ``--resume_from_checkpoint``...).

A run never mixes with another: an ``--output_dir`` holding a previous run is refused unless the
run resumes it (``--resume_from_checkpoint true``: its newest complete checkpoint) or
``--overwrite_output_dir`` removes it first (see ``hicae.training.run_folder``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments, set_seed

from ..io.checkpoint import load_base, load_icae, read_checkpoint
from ..config import HierarchyConfig, ICAEConfig
from ..training.data import FINETUNE_FIELDS, PRETRAIN_FIELDS, Collator, JsonlDataset, RehearsalMix
from ..errors import ConfigError
from ..hierarchy import HierarchicalICAE
from ..model import ICAE
from ..training.plots import save_loss_curve
from ..training.run_folder import (checkpoint_step, clear_previous_run, complete_checkpoints, inside, previous_run,
                          resolve_resume, rng_file)
from ..training.trainer import ICAETrainer
from .flags import Flags
from .outputs import check_writable, refuse_overwriting_inputs


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model: hub name or local path (e.g. Qwen/Qwen2.5-7B-Instruct)."}
    )
    restore_from: str | None = field(
        default=None, metadata={"help": "A hicae checkpoint to start from (finetune after pretrain)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Base model dtype: auto, bf16, fp16 or fp32."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa, eager, flash_attention_2."})
    allow_other_weights: bool = field(
        default=False,
        metadata={"help": "--restore_from on a base model with other weights than it was trained on (refused otherwise)."},
    )
    hierarchical: bool = field(
        default=False,
        metadata={"help": "Train HierarchicalICAE (--levels, --group_size, --max_slots); a Phase-1 --restore_from is upgraded."},
    )


@dataclass
class DataArguments:
    train_file: str = field(default=None, metadata={"help": "Training JSONL."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation JSONL (same format)."})
    lm_ratio: float = field(default=0.0, metadata={"help": "pretrain: share of LM (continuation) examples; the rest is AE."})
    rehearsal_file: str | None = field(default=None, metadata={
        "help": "finetune: a pretraining JSONL {'text'} whose texts join the training records as AE examples "
                "(LM by --lm_ratio), so that fine-tuning does not erase reconstruction."})
    rehearsal_ratio: float = field(default=0.25, metadata={
        "help": "finetune with --rehearsal_file: the share of training examples that are rehearsal texts."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation records."})


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an --output_dir that holds a previous run: its checkpoints, final model and "
                          "logs are removed first (refused otherwise, unless --resume_from_checkpoint)."},
    )
    allow_partial_resume: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint that lacks optimizer.pt, scheduler.pt or the RNG state (refused "
                          "otherwise): they start afresh, so the run differs from an uninterrupted one."},
    )


def build_parser(mode: str) -> Flags:
    # Pretraining corpora hold documents longer than any window: read their head. Fine-tuning
    # refuses over-long inputs, since cutting one could remove what the answer needs.
    return Flags(mode, (ModelArguments, DataArguments, ICAEConfig, HierarchyConfig, RunArguments, TrainingArguments),
                 overlong="truncate" if mode == "pretrain" else "error", report_to="auto",
                 remove_unused_columns=False, label_names=["dec_labels"])


def _report_to(value) -> list[str]:
    if value in ("auto", ["auto"]):
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return value


# never taken from --restore_from
_COMMAND_ONLY = ("overlong", *ICAEConfig.DISTILL_FIELDS.values(), "distill_temperature")


def _icae_config(margs: ModelArguments, cli_cfg: ICAEConfig, given: set[str]) -> ICAEConfig | None:
    """Config from --restore_from, with runtime knobs from the command line (``overlong`` always: the command's
    default or flag); memory-defining fields must agree. ``given``: the settings the command line names."""
    if not margs.restore_from:
        return None
    saved = read_checkpoint(margs.restore_from).icae
    for name in ICAEConfig._MEMORY_FIELDS:
        if name in given and getattr(cli_cfg, name) != getattr(saved, name):
            raise ConfigError(
                f"--{name} {getattr(cli_cfg, name)} differs from the restored checkpoint's {getattr(saved, name)}; "
                "memory settings come from --restore_from"
            )
    # The over-length policy is the command's (its default differs: pretrain truncates, finetune refuses),
    # never inherited: a pretraining checkpoint's truncate would cut fine-tuning inputs whose answers are trained.
    # So are the distillation settings: a run started from a distilled one distils only when asked to (each costs a
    # base forward per example, and HierarchicalICAE has no teacher).
    runtime = {f.name: getattr(cli_cfg, f.name) for f in dataclasses.fields(ICAEConfig)
               if f.name not in ICAEConfig._MEMORY_FIELDS and (f.name in given or f.name in _COMMAND_ONLY)}
    return dataclasses.replace(saved, **runtime)


def _check_distributed(targs: TrainingArguments) -> None:
    """A launcher (torchrun, accelerate launch) started several processes: they must form one DDP group.

    On a machine without GPUs, transformers sets up no process group unless ``--use_cpu`` is given,
    and every process would silently train alone on all the data, writing to the same folder.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and targs.world_size != launched:
        raise ConfigError(
            f"launched as {launched} processes (WORLD_SIZE={launched}) but training sees {targs.world_size}: "
            "on a machine without GPUs pass --use_cpu true (gloo backend)"
        )


def _start_clean(targs: TrainingArguments, rargs: RunArguments, resume: Path | None, inputs) -> None:
    """Refuse an --output_dir holding a previous run unless this run resumes it; --overwrite_output_dir clears it."""
    out = targs.output_dir
    if resume is not None and inside(resume, out):
        if rargs.overwrite_output_dir:
            raise ConfigError(f"--overwrite_output_dir would delete --resume_from_checkpoint {resume}: give one of them")
        # Going back to an older checkpoint abandons the newer ones: left there, rotation (by step) would
        # keep them and a later `--resume_from_checkpoint true` would pick them, mixing two continuations.
        step = checkpoint_step(resume)
        newer = [] if step is None else [p.name for p in complete_checkpoints(out, need_state=False)[0]
                                         if checkpoint_step(p) > step]
        if newer:
            raise ConfigError(f"--resume_from_checkpoint {resume} is older than {', '.join(newer)} in --output_dir "
                              f"{out}: move or delete {'them' if len(newer) > 1 else 'it'} to continue from "
                              f"{Path(resume).name} (or resume from the newest: --resume_from_checkpoint true)")
        return  # continuing the run that is there
    old = previous_run(out)
    if not old:
        return
    shown = ", ".join(old[:4]) + (f" and {len(old) - 4} more" if len(old) > 4 else "")
    if not rargs.overwrite_output_dir:
        raise ConfigError(f"--output_dir {out} holds a previous run ({shown}): pass --resume_from_checkpoint true to "
                          f"continue it, --overwrite_output_dir to delete it and start over, or choose another "
                          f"--output_dir")
    for opt, p in [*inputs, ("--resume_from_checkpoint", resume)]:
        hit = next((n for n in old if p is not None and inside(p, Path(out) / n)), None)
        if hit is not None:
            raise ConfigError(f"{opt} {p} lies in {Path(out) / hit}, which --overwrite_output_dir would delete; "
                              f"move it or choose another --output_dir")
    with targs.main_process_first(local=False, desc="clearing --output_dir"):
        if targs.should_save:
            clear_previous_run(out, old)
            print(f"hicae: --overwrite_output_dir: removed the previous run from {out} ({shown})", file=sys.stderr)


def run(mode: str, argv: list[str]) -> int:
    parser = build_parser(mode)
    argv = parser.expand_config(argv)
    margs, dargs, cfg, hier, rargs, targs = parser.parse(argv)
    given = {parser.dest_of(a.split("=")[0]) for a in argv if a.startswith("--")}  # recipe flags count
    hier = hier if margs.hierarchical else None
    targs.report_to = _report_to(targs.report_to)
    _check_distributed(targs)
    if not dargs.train_file:
        raise ConfigError("--train_file is required")
    if mode == "pretrain" and cfg.ft_distill:
        raise ConfigError("--ft_distill distils the answers of instruction records, and pretraining has none: "
                          "drop it (--lm_distill distils LM continuations)")
    for flag in ("max_train_samples", "max_eval_samples"):
        n = getattr(dargs, flag)
        if n is not None and n < 1:
            raise ConfigError(f"--{flag} {n}: must be at least 1 (leave it out to use every record)")
    check_writable("--output_dir", targs.output_dir, folder=True)
    inputs = [("--train_file", dargs.train_file), ("--validation_file", dargs.validation_file),
              ("--rehearsal_file", dargs.rehearsal_file),
              ("--model_name_or_path", margs.model_name_or_path), ("--restore_from", margs.restore_from)]
    refuse_overwriting_inputs([("--output_dir", targs.output_dir)],
                              [*inputs, ("--resume_from_checkpoint", targs.resume_from_checkpoint)])
    # checked now, before a model loads; the trainer resolves it again and says what it skipped
    resume = resolve_resume(targs.resume_from_checkpoint, targs.output_dir, rargs.allow_partial_resume,
                            rng=rng_file(targs.world_size, targs.process_index))
    _start_clean(targs, rargs, resume.path if resume else None, inputs)
    fields = PRETRAIN_FIELDS if mode == "pretrain" else FINETUNE_FIELDS
    train = JsonlDataset(dargs.train_file, fields, limit=dargs.max_train_samples)
    if dargs.rehearsal_file:
        if mode != "finetune":
            raise ConfigError("--rehearsal_file mixes pretraining texts into fine-tuning: pretraining reads "
                              "texts already (give them in --train_file)")
        train = RehearsalMix(train, JsonlDataset(dargs.rehearsal_file, PRETRAIN_FIELDS), dargs.rehearsal_ratio)
    evals = JsonlDataset(dargs.validation_file, fields, limit=dargs.max_eval_samples) if dargs.validation_file else None
    if evals is None and targs.eval_strategy != "no":
        raise ConfigError(f"--eval_strategy {targs.eval_strategy.value} needs --validation_file")

    set_seed(targs.seed)  # before the model is built: LoRA's initialisation draws from the global RNG
    restored = _icae_config(margs, cfg, given)
    if restored is not None:
        base = tok = None
        if margs.model_name_or_path:
            base, tok = load_base(margs.model_name_or_path, dtype=margs.dtype, attn_implementation=margs.attn_implementation)
        model = load_icae(margs.restore_from, base_model=base, tokenizer=tok, config_overrides=restored.to_dict(),
                          hierarchy=hier, allow_other_weights=margs.allow_other_weights, dtype=margs.dtype,
                          attn_implementation=margs.attn_implementation)
    else:
        if mode == "finetune":
            print("hicae finetune: no --restore_from given; fine-tuning a fresh ICAE from the base model", file=sys.stderr)
        if not margs.model_name_or_path:
            raise ConfigError("--model_name_or_path is required (or --restore_from a hicae checkpoint)")
        base, tok = load_base(margs.model_name_or_path, dtype=margs.dtype, attn_implementation=margs.attn_implementation)
        model = ICAE(base, tok, cfg) if hier is None else HierarchicalICAE(base, tok, cfg, hier)

    collator = Collator(model.tokenizer, model.tokens, model.icae_config, mode, dargs.lm_ratio, seed=targs.seed,
                        hierarchy=model.hierarchy if model.hierarchical else None)
    trainer = ICAETrainer(model=model, args=targs, train_dataset=train, eval_dataset=evals, data_collator=collator,
                          allow_partial_resume=rargs.allow_partial_resume)
    result = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    trainer.save_model(targs.output_dir)
    metrics = dict(result.metrics)
    if evals is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        save_loss_curve(trainer.state.log_history, targs.output_dir, title=f"hicae {mode}")
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    return 0


def pretrain_parser() -> Flags:
    return build_parser("pretrain")


def finetune_parser() -> Flags:
    return build_parser("finetune")


def pretrain(argv: list[str]) -> int:
    return run("pretrain", argv)


def finetune(argv: list[str]) -> int:
    return run("finetune", argv)
