#!/usr/bin/env python
"""Peak memory and time of one ICAE training step: the shared-weights decoder vs two model copies.

Forward + backward of ``ICAE.forward`` on one AE example of ``--train-tokens`` tokens, gradient
checkpointing on, with the decoder sharing the base weights (hicae's default) vs a second copy
(``share_decoder=False``, the reference's design). On CUDA: ``torch.cuda.max_memory_allocated``;
on the CPU: the process's peak RSS (a rough stand-in that keeps the code path testable). Also the
model FLOPs of the step (for MFU in run.py). ``bench_compress.py --train-memory`` runs it too.

    .venv/bin/python benchmarks/bench_train.py                        # tiny Qwen3, CPU, 512 tokens
    python3 benchmarks/bench_train.py --shape qwen2.5-7b --train-tokens 5120
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

import torch
from harness import (TEXT_VOCAB, ICAE, PeakMemory, build_icae, gib, layer_flops_per_token, main_single, model_fields,
                     release, sync)

from hicae.batching import pad_decoder, pad_encoder
from hicae.layout import encoder_rows

TITLE = "training step"


def train_batch(model: ICAE, ids: list[int], device: str) -> dict[str, torch.Tensor]:
    """One AE example, laid out exactly as training does (layout + batching)."""
    cfg = model.icae_config
    rows = encoder_rows([ids], cfg.mem_size, cfg.compression_rate)
    enc = pad_encoder(rows, model.tokens.pad_id)
    ex = model.ae_example(len(rows.rows) * cfg.mem_size, ids)
    dec = pad_decoder([ex], model.tokens.pad_id)
    return dict(
        enc_ids=enc.ids.to(device),
        enc_seg_lens=enc.seg_lens,
        dec_ids=dec.ids.to(device),
        dec_labels=dec.labels.to(device),
        dec_mask=dec.attention_mask.to(device),
        task=torch.tensor([0]),
        segments_per_example=torch.tensor(rows.segments_per_text),
    )


def train_step_memory(args: argparse.Namespace, tokenizer: Any, share: bool) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    release(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_icae(args, tokenizer, share_decoder=share)
    model.train()
    model.gradient_checkpointing_enable()
    g = torch.Generator().manual_seed(args.seed + 2)
    ids = torch.randint(0, TEXT_VOCAB, (args.train_tokens,), generator=g).tolist()
    batch = train_batch(model, ids, args.device)
    params = list(model.trainable_parameters().values())
    sync(args.device)
    weights = torch.cuda.memory_allocated() if cuda else 0
    build_peak = torch.cuda.max_memory_allocated() if cuda else 0

    def step() -> tuple[float, float]:
        torch.manual_seed(args.seed + 3)  # same LoRA dropout masks in both runs
        out = model(**batch)
        out["loss"].backward()
        gn = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)).item()
        loss = out["loss"].item()
        for p in params:
            p.grad = None
        return loss, gn

    step()  # warm-up (allocator, kernels); its peak is the same as the timed one's
    sync(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = PeakMemory("cpu")
    with contextlib.nullcontext() if cuda else rss:  # no polling thread competing with a GPU step
        t0 = time.perf_counter()
        loss, gn = step()
        sync(args.device)
        ms = (time.perf_counter() - t0) * 1e3
    enc_tokens = int(batch["enc_ids"].shape[0] * batch["enc_ids"].shape[1])
    dec_tokens = int(batch["dec_ids"].shape[1])
    res: dict[str, Any] = {
        "share_decoder": share,
        "step_ms": ms,
        # model FLOPs of the step: forward (2 per weight and token) + backward to the activations (2 more);
        # the base weights are frozen, so no weight gradients beyond LoRA's (counted with the weights).
        # Gradient checkpointing's recomputed forward is not counted (hardware FLOPs would add ~2 per weight and token).
        "model_flop": 2 * (layer_flops_per_token(model, int(batch["enc_ids"].shape[1])) * enc_tokens
                           + layer_flops_per_token(model, dec_tokens) * dec_tokens),
        "encoder_tokens": enc_tokens,
        "decoder_tokens": dec_tokens,
        "loss": loss,
        "grad_norm": gn,
        "trainable_params": sum(p.numel() for p in params),
        "encoder_rows": int(batch["enc_ids"].shape[0]),
        "decoder_len": int(batch["dec_ids"].shape[1]),
    }
    if cuda:
        res.update(
            weights_bytes=weights,
            build_peak_bytes=build_peak,
            peak_bytes=torch.cuda.max_memory_allocated(),
            metric="torch.cuda.max_memory_allocated",
        )
    else:
        res.update(weights_bytes=rss.baseline, peak_bytes=rss.peak, metric="process peak RSS (CPU stand-in)")
    del model, batch, params
    release(args.device)
    if cuda:  # should be ~0: the next model is built only after this one is gone
        res["allocated_after_release_bytes"] = torch.cuda.memory_allocated()
    return res


def bench_train(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    runs = {}
    for share in (True, False):  # the first model is released before the second is built
        runs["shared" if share else "two_copies"] = train_step_memory(args, tokenizer, share)
    s, t = runs["shared"], runs["two_copies"]
    return {
        "kind": "train",
        **model_fields(args),
        "train_tokens": args.train_tokens,
        "gradient_checkpointing": True,
        **runs,
        "peak_ratio_two_copies_over_shared": t["peak_bytes"] / s["peak_bytes"] if s["peak_bytes"] else None,
        "loss_equal": s["loss"] == t["loss"],
        "grad_norm_rel_diff": abs(s["grad_norm"] - t["grad_norm"]) / max(abs(t["grad_norm"]), 1e-30),
    }



def train_markdown(train: list[dict[str, Any]]) -> str:
    parts = []
    if train:
        cuda = train[0]["device"].startswith("cuda")
        what = "peak GPU memory (max_memory_allocated), GiB" if cuda else "peak process RSS, GiB (CPU stand-in)"
        rest = "at rest" if cuda else "RSS before"
        parts.append(
            f"Training step (forward+backward, one AE example, gradient checkpointing); {what}:\n\n"
            f"| shape | dtype | tokens | shared: {rest} / peak | two copies: {rest} / peak | two copies / shared "
            "| step ms shared / two copies | same loss and grads |\n|---|---|---|---|---|---|---|---|"
        )
        for r in train:
            s, t = r["shared"], r["two_copies"]
            ratio = r["peak_ratio_two_copies_over_shared"]
            same = r["loss_equal"] and r["grad_norm_rel_diff"] < 1e-3
            parts[-1] += (
                f"\n| {r['shape']} | {r['dtype']} | {r['train_tokens']:,} | {gib(s['weights_bytes'])} / {gib(s['peak_bytes'])} "
                f"| {gib(t['weights_bytes'])} / {gib(t['peak_bytes'])} | {ratio:.2f}x "
                f"| {s['step_ms']:.0f} / {t['step_ms']:.0f} | {'yes' if same else 'no (grad norm rel diff %.1e)' % r['grad_norm_rel_diff']} |"
            )
    return "\n\n".join(parts)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--train-tokens", type=int, default=None, help="AE example length (default 5120 on cuda, 512 on cpu)")


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    args.train_tokens = args.train_tokens or (5120 if args.device.startswith("cuda") else 512)


def run(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    r = bench_train(args, tokenizer)
    print(f"train: peak shared {gib(r['shared']['peak_bytes'])} GiB, two copies {gib(r['two_copies']['peak_bytes'])} GiB "
          f"({r['shared']['metric']})", flush=True)
    return {"results": [r]}


def markdown(result: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    return train_markdown(result["results"])


def problem(result: dict[str, Any]) -> str | None:
    return None  # the table reports whether loss and gradients agree


if __name__ == "__main__":
    sys.exit(main_single(sys.modules[__name__]))
