#!/usr/bin/env python
"""Per-token cost of decoding vs batch size on this machine: does batching requests pay here?

Loads the real Qwen2.5-0.5B + the demo adapter (as ``bench_serve.py`` does), prefills B rows of P
positions, then times one-token decoding steps for each B. Compute-bound hardware would show the
step time growing with B; weight-reading-bound hardware shows it flat (batching then multiplies
throughput).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/probes/probe_batch_steps.py --dtype bf16 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--prefix", type=int, default=60, help="positions prefilled per row")
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from hicae.io.checkpoint import load_icae
    from hicae.demo import DEMO_CHECKPOINT
    from hicae.cli.infer import load_base
    from hicae.demo.real_model import qwen25_path

    cpu = torch.device("cpu")
    base, tok = load_base(str(qwen25_path(fetch=False)), dtype=args.dtype, device=cpu)
    dec = load_icae(str(DEMO_CHECKPOINT), base_model=base, tokenizer=tok, dtype=args.dtype, device=cpu).decoder
    D = dec.config.hidden_size
    print(f"| rows B | prefill of B x {args.prefix} positions | one decoding step (median) | per row and token |")
    print("|---|---|---|---|")
    with torch.no_grad():
        dec(inputs_embeds=torch.zeros(1, args.prefix, D, dtype=dec.dtype), logits_to_keep=1)  # warm-up (kernel set-up)
        for B in map(int, args.batches.split(",")):
            x = torch.randn(B, args.prefix, D, generator=torch.Generator().manual_seed(0)).to(dec.dtype) * 0.02
            t = time.perf_counter()
            out = dec(inputs_embeds=x, past_key_values=DynamicCache(config=dec.config), use_cache=True, logits_to_keep=1)
            prefill = time.perf_counter() - t
            ids = out.logits[:, -1:].argmax(-1)  # [B, 1]
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                out = dec(input_ids=ids, past_key_values=out.past_key_values, use_cache=True)
                times.append(time.perf_counter() - t)
                ids = out.logits[:, -1:].argmax(-1)
            step = statistics.median(times)
            print(f"| {B} | {prefill:.2f} s | {step * 1000:.0f} ms | {step * 1000 / B:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
