"""A thin ``transformers.Trainer`` subclass: ICAE's loss, per-objective logs, and trained-only checkpoints
that are complete or absent."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..io.checkpoint import load_trained_weights
from ..errors import CheckpointError
from ..io.fileio import write_text_atomic
from ..errors import ConfigError
from .fsdp import enable_on_cpu, full_trained_parameters, is_sharded, shard_for_training
from ..model import LOGGED
from ..speed import bf16_adapter_training
from .run_folder import STAGING, TRAINER_STATE, TRAINING_ARGS, commit_checkpoint, resolve_resume, rng_file, rotate

HOST_KEYS = ("enc_seg_lens", "segments_per_example")  # batch entries the model reads on the host


class ICAETrainer(Trainer):
    """Trains an ``ICAE``; logs ``ae_loss`` / ``lm_loss`` / ``ft_loss`` (cross-entropies) and, with ``lm_distill``
    or ``ft_distill``, ``distill_loss`` (the KL on the taught LM and answer tokens) beside the total loss.

    Checkpoints hold only what is trained (adapter, memory and task embeddings, config), written
    by ``ICAE.save_pretrained``, beside the Trainer's optimizer, scheduler, RNG and trainer state.
    Each is written into ``.hicae-saving/`` and renamed into place once whole, so a ``checkpoint-N``
    folder is complete or absent. ``train(resume_from_checkpoint=True)`` resumes from the newest
    complete one; a checkpoint lacking the optimizer, scheduler or RNG state is refused unless
    ``allow_partial_resume``. Resuming loads the weights strictly.

    ``bf16_adapter`` (default on): a bf16 model training on the CPU computes its LoRA products in bf16
    from the fp32 weights (``speed.bf16_adapter_training``; the real Qwen2.5-0.5B recipe's step in
    0.88x the CPU time, docs/benchmarks.md); not under gradient checkpointing or FSDP.
    """

    def __init__(self, *args: Any, allow_partial_resume: bool = False, bf16_adapter: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.allow_partial_resume = allow_partial_resume
        self.bf16_adapter = bf16_adapter
        # Our loss is a mean over the batch's labelled tokens; let the Trainer scale it for
        # gradient accumulation (we take no num_items_in_batch).
        self.model_accepts_loss_kwargs = False
        # per split: per-task loss sums and token counts, 0-d tensors on the device between logs
        self._sums: dict[str, dict[str, Any]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        if self.is_fsdp_enabled and self.args.load_best_model_at_end:
            raise ConfigError("--load_best_model_at_end is not supported under FSDP (the best checkpoint's "
                              "weights cannot be loaded into a sharded model); load it after training")

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        self.is_fsdp_enabled = enable_on_cpu(self.accelerator)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # Segment lengths plan the encoder's chunks on the host: moving them to the GPU would make
        # the forward read them back (a device sync every step), so they stay where they are.
        host = {k: inputs.pop(k) for k in HOST_KEYS if k in inputs}
        inputs = super()._prepare_inputs(inputs)
        inputs.update(host)
        return inputs

    def adapter_speed(self, model: Any) -> Any:
        """``speed.bf16_adapter_training`` around a training forward where it applies (see the class), else nothing.

        Not under gradient checkpointing: backward recomputes the layers outside the block, and the
        recomputation must save what the forward saved. Not under FSDP (its swapped leaf weights).
        """
        icae = self.accelerator.unwrap_model(model)
        checkpointing = self.args.gradient_checkpointing or getattr(getattr(icae, "decoder", None),
                                                                    "is_gradient_checkpointing", False)
        if (not self.bf16_adapter or not model.training or checkpointing or self.is_fsdp_enabled
                or self.args.device.type != "cpu" or getattr(icae, "dtype", None) != torch.bfloat16):
            return contextlib.nullcontext()
        return bf16_adapter_training(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D401
        with self.adapter_speed(model):
            out = model(**inputs)
        split = "train" if model.training else "eval"
        acc = self._sums[split]
        for name in LOGGED:
            if f"{name}_tokens" in out:
                # summed on the device; read back only when logging (no host sync per step)
                acc[f"{name}_loss_sum"] = acc[f"{name}_loss_sum"] + out[f"{name}_loss_sum"].detach().double()
                acc[f"{name}_tokens"] = acc[f"{name}_tokens"] + out[f"{name}_tokens"].detach().double()
        return (out["loss"], out) if return_outputs else out["loss"]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        acc = self._summed_over_processes(self._sums[split])
        prefix = "eval_" if split == "eval" else ""
        for name in LOGGED:
            n = acc.get(f"{name}_tokens", 0.0)
            if n:
                logs[f"{prefix}{name}_loss"] = round(acc[f"{name}_loss_sum"] / n, 4)
        self._sums[split] = defaultdict(float)
        super().log(logs, start_time)

    def _summed_over_processes(self, acc: dict[str, float]) -> dict[str, float]:
        """Per-objective sums of all processes (each only sees its own batches under DDP).

        ``Trainer`` calls ``log`` on every process (after gathering the loss), so this collective is
        reached by all of them.
        """
        keys = [f"{name}_{what}" for name in LOGGED for what in ("loss_sum", "tokens")]
        local = torch.stack([torch.as_tensor(acc.get(k, 0.0), dtype=torch.float64, device=self.args.device).reshape(())
                             for k in keys])
        if self.args.world_size > 1:
            local = self.accelerator.reduce(local, reduction="sum")
        return dict(zip(keys, local.tolist()))

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if self.is_fsdp_enabled and not is_sharded(self.model):
            # An accelerate FSDP config: hicae's own per-layer sharding (fsdp.py), before the
            # Trainer prepares the model (accelerate leaves a sharded model as it is). A resumed
            # run's weights are loaded first, into the full tensors.
            if resume_from_checkpoint is not None:
                load_trained_weights(self.model, resume_from_checkpoint)
            shard_for_training(self.model, self.accelerator)
        return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        # FSDP: every process gathers the trained tensors (a collective), the main one writes them.
        # (The Trainer's own FSDP save would gather, or write, the whole frozen base model.)
        with full_trained_parameters(self.model):
            if self.args.should_save:
                self._save(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # The Trainer's FSDP branch also saves the whole model (frozen base included); hicae's
        # checkpoint already holds what is trained, so only the optimizer and scheduler are saved.
        from accelerate.utils import save_fsdp_optimizer
        from transformers.trainer import SCHEDULER_NAME

        save_fsdp_optimizer(self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        # The training arguments as JSON, not a pickle.
        write_text_atomic(os.path.join(output_dir, TRAINING_ARGS), self.args.to_json_string())

    # ---- complete-or-absent checkpoints -------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        # while a checkpoint is saved, the Trainer writes it under the staging folder
        return os.path.join(run_dir, STAGING) if getattr(self, "_staging", False) else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's save, into ``<run>/.hicae-saving/checkpoint-N``, then renamed to ``<run>/checkpoint-N``.

        Every process writes its part (its RNG state; under FSDP its shards) before the rename,
        hence the barriers. Rotation (``--save_total_limit``) runs after the rename and keeps the
        checkpoint just saved and the best one.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / STAGING
        if self.args.should_save and (staging / name).exists():
            shutil.rmtree(staging / name)  # left by a save that was cut off
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        staged, final = staging / name, run_dir / name
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent == staging:  # the Trainer named the staged path
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        if self.args.should_save:
            if best != self.state.best_model_checkpoint:
                self.state.save_to_json(str(staged / TRAINER_STATE))
            commit_checkpoint(staged, final)
            with contextlib.suppress(OSError):
                staging.rmdir()  # when empty: nothing of an unfinished save remains
            rotate(run_dir, self.args.save_total_limit, keep=[final, self.state.best_model_checkpoint])
        self.accelerator.wait_for_everyone()

    # ---- resuming -----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """``Trainer.train``; ``resume_from_checkpoint`` also takes ``"true"``, and is checked (see ``resolve_resume``)."""
        resume = resolve_resume(resume_from_checkpoint, self.args.output_dir, self.allow_partial_resume,
                                rng=rng_file(self.args.world_size, self.args.process_index),
                                scaler=getattr(self.accelerator, "scaler", None) is not None)
        if resume is not None and self.is_world_process_zero():
            resume.report()
        return super().train(resume_from_checkpoint=None if resume is None else str(resume.path), **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        try:
            if checkpoint is not None and self._cpu_ddp():
                self._load_optimizer_and_scheduler_on_cpu(checkpoint)
            else:
                super()._load_optimizer_and_scheduler(checkpoint)
        except (ValueError, KeyError) as e:  # load_state_dict: the saved state is of other parameters
            raise CheckpointError(f"{checkpoint}/optimizer.pt does not fit this model's trained parameters ({e}); "
                                  "it comes from another run") from e
        if checkpoint is None:
            return
        # torch checks only the number of parameters; a moment of another shape would fail at the next step
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for name, v in self.optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                        raise CheckpointError(
                            f"{checkpoint}/optimizer.pt does not fit this model's trained parameters: its {name!r} "
                            f"has shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}; it comes from "
                            "another run")

    def _cpu_ddp(self) -> bool:
        return (self.args.world_size > 1 and self.args.device.type == "cpu"
                and not (self.is_fsdp_enabled or self.is_deepspeed_enabled))

    def _load_optimizer_and_scheduler_on_cpu(self, checkpoint: str) -> None:
        """DDP on CPUs (gloo): transformers maps the saved state to ``args.device``, which is then
        ``cpu:N``, a location ``torch.load`` cannot restore to; map it to ``cpu``."""
        files = [os.path.join(checkpoint, n) for n in ("optimizer.pt", "scheduler.pt")]
        if all(os.path.isfile(f) for f in files):  # else a partial resume (--allow_partial_resume), as transformers
            for f, target in zip(files, (self.optimizer, self.lr_scheduler)):
                target.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_fsdp_enabled:  # loaded before sharding (_prepare_for_training)
            return
        load_trained_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_trained_weights(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)
