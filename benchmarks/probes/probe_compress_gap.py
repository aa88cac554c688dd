#!/usr/bin/env python
"""Where compression's distance to the matmul roofline goes: the same batched compression, variant by variant.

On one random model and input (``bench_compress.py``'s ``--shape``/``--segments``/``--texts``), timed
in turns (warm-up, then ``--repeats``, median):

* ``default``: ``ICAE.compress_ids`` as shipped (LoRA weights in fp32, as peft keeps trainable adapters);
* ``lora_model_dtype``: the LoRA weights cast to the model's dtype (bf16) for inference;
* ``no_adapter``: the encoder with its adapter disabled (the base alone: what LoRA costs);
* ``tf32``: the default with TF32 matmuls allowed (only matters for the fp32 LoRA);

plus the bf16 matmul roofline and each variant's share of it (FLOPs as in bench_compress: the
linear weights incl. LoRA, 2 per token, plus causal attention). Writes JSON (``--out``).

    python3 benchmarks/probes/probe_compress_gap.py --shape qwen2.5-7b --out gap.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness.py and bench_compress.py, one folder up
from harness import build_icae, device_name, encoder_flops, main_single, measure_roofline, time_fns  # noqa: E402

from bench_compress import make_texts  # noqa: E402
from hicae.layout import encoder_rows  # noqa: E402

TITLE = "compression roofline gap"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--texts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    args.ragged, args.train_tokens = False, 0


def run(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    roof = measure_roofline(args.device) if args.device.startswith("cuda") else None
    model = build_icae(args, tokenizer).eval()
    texts = make_texts(args)
    seg_lens = encoder_rows(texts, args.mem_size, args.compression_rate).text_lengths
    flops = encoder_flops(model, seg_lens)
    lora = [m for n, m in model.encoder.named_modules() if n.endswith(("lora_A", "lora_B"))]

    @contextlib.contextmanager
    def lora_in(dtype):
        old = [next(iter(m.parameters())).dtype for m in lora]
        for m in lora:
            m.to(dtype)
        try:
            yield
        finally:
            for m, d in zip(lora, old):
                m.to(d)

    @contextlib.contextmanager
    def tf32():
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev

    def run(ctx):
        def fn():
            with ctx():
                return model.compress_ids(texts)
        return fn

    variants = {
        "default": run(contextlib.nullcontext),
        "lora_model_dtype": run(lambda: lora_in(model.dtype)),
        "no_adapter": run(model.encoder.disable_adapter),
        "tf32": run(tf32),
    }
    with torch.no_grad():
        times, outs = time_fns(list(variants.values()), args.device, args.warmup, args.repeats)
    ref = outs[0].slots
    scale = max(s.float().abs().max().item() for s in ref)
    res = {"shape": args.shape, "dtype": args.dtype, "device": device_name(args.device), "encoder_tflop": flops / 1e12,
           "roofline_bf16_tflops": roof, "text_tokens": sum(map(len, texts)), "variants": {}}
    for (name, _), t, o in zip(variants.items(), times, outs):
        ms = statistics.median(t)
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(o.slots, ref)) / scale
        res["variants"][name] = {"ms": ms, "tflops": flops / ms / 1e9, "share_of_roofline": flops / ms / 1e9 / roof if roof else None,
                                 "tokens_per_s": res["text_tokens"] / ms * 1e3, "rel_diff_vs_default": diff}
        print(f"{name:18s} {ms:8.1f} ms  {flops / ms / 1e9:8.1f} TFLOP/s" + (f"  {flops / ms / 1e9 / roof:.0%} of roofline" if roof else "")
              + f"  rel diff {diff:.1e}", flush=True)
    return res


def markdown(res: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    rows = ["| variant | ms | TFLOP/s | share of roofline | tokens/s | rel diff vs default |", "|---|---|---|---|---|---|"]
    for name, v in res["variants"].items():
        share = f"{v['share_of_roofline']:.0%}" if v["share_of_roofline"] else "-"
        rows.append(f"| {name} | {v['ms']:.1f} | {v['tflops']:.2f} | {share} | {v['tokens_per_s']:,.0f} | {v['rel_diff_vs_default']:.1e} |")
    return "\n".join(rows)


def problem(res: dict[str, Any]) -> str | None:
    return None


if __name__ == "__main__":
    sys.exit(main_single(sys.modules[__name__]))
