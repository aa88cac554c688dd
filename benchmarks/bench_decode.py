#!/usr/bin/env python
"""Decode speed from a memory: ms per new token with each decoding mode of ``ICAE.set_decoding``.

One memory of ``--slots`` slots (random ids compressed by a random model), ``--batch`` copies of one
question, exactly ``--new-tokens`` new tokens (``min_new_tokens`` keeps EOS away). Per mode
(``dynamic``: transformers' eager loop with a DynamicCache, the baseline; ``static``: StaticCache,
eager; ``compiled``: StaticCache + transformers' auto-compiled decode step, CUDA graphs on a GPU):

    ms/token = (time(N new tokens) - time(1 new token)) / (N - 1)

so the prefill of the memory prefix cancels out. The floor is reading the decoder's weights and
the KV cache once per token at the copy bandwidth measured in the same run (``--bandwidth``, GPU).
Greedy outputs must equal the dynamic mode's (fp32; in bf16 a near-tie may flip: reported).

    .venv/bin/python benchmarks/bench_decode.py                          # tiny, CPU: dynamic, static
    python3 benchmarks/bench_decode.py --shape qwen2.5-7b --modes dynamic,static,compiled --bandwidth
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
from harness import TEXT_VOCAB, main_single, release, sync

from bench_prefix import build
from hicae.speed import DECODING_MODES

TITLE = "decoding"


def measure_bandwidth(device: str, nbytes: int = 2**30) -> float:
    """Device copy bandwidth in bytes/s (read + write of ``nbytes``), median of 10 after warm-up."""
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    ts = []
    for _ in range(10):
        sync(device)
        t = time.perf_counter()
        y.copy_(x)
        sync(device)
        ts.append(time.perf_counter() - t)
    del x, y
    return 2 * nbytes / statistics.median(ts)


def bytes_per_token(model: Any, context: int, batch: int) -> float:
    """Bytes a decode step must read: the decoder's weights (the input embedding is only gathered)
    plus the KV cache of ``context`` positions per row."""
    dec = model.decoder
    emb = dec.get_input_embeddings().weight
    out = dec.get_output_embeddings().weight
    w = sum(p.numel() * p.element_size() for p in dec.parameters())
    if emb.data_ptr() != out.data_ptr():  # untied: the input table is not read as a whole
        w -= emb.numel() * emb.element_size()
    c = model.base_config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * hd * emb.element_size() * context * batch
    return float(w + kv)


def bench_decode(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    model = build(args, tokenizer)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, TEXT_VOCAB, (args.slots * args.compression_rate,), generator=g).tolist()
    with torch.no_grad():
        mem = model.compress_ids([ids])
    question = "What does the text say about the river, and who wrote it?"
    mem_b = mem[[0] * args.batch]
    prompts = [question] * args.batch
    context = len(model.tokens.ft_example(args.slots, question, None).ids) + args.new_tokens
    N = args.new_tokens

    def gen(n: int) -> list[list[int]]:
        # prefix_cache=False: the decode loop alone (bench_prefix measures the prefix cache)
        return model.generate_ids(mem_b, prompts, max_new_tokens=n, min_new_tokens=n, prefix_cache=False)

    res: dict[str, Any] = {"kind": "decode", "shape": args.shape, "dtype": args.dtype, "device": args.device,
                           "slots": args.slots, "batch": args.batch, "new_tokens": N, "context": context,
                           "bucket": args.bucket, "modes": {}}
    ref = None
    for mode in args.modes:
        model.set_decoding(mode, bucket=args.bucket)
        t = time.perf_counter()
        gen(N)  # warm-up; compiles in "compiled" mode (reported apart)
        gen(1)
        sync(args.device)
        first_s = time.perf_counter() - t
        t1, tn = [], []
        out = None
        for _ in range(args.repeats):
            for n, acc in ((1, t1), (N, tn)):
                sync(args.device)
                t = time.perf_counter()
                o = gen(n)
                sync(args.device)
                acc.append(time.perf_counter() - t)
                if n == N:
                    out = o
        assert out is not None and all(len(r) == N for r in out), [len(r) for r in out or []]
        per_tok = (statistics.median(tn) - statistics.median(t1)) / (N - 1) * 1e3
        ref = ref if ref is not None else out
        res["modes"][mode] = {"ms_per_token": per_tok, "first_calls_s": first_s, "prefill_plus_one_ms": statistics.median(t1) * 1e3,
                              "total_ms": statistics.median(tn) * 1e3, "same_tokens_as_first_mode": out == ref}
        print(f"decode {mode}: {per_tok:.2f} ms/token (first calls incl. any compile {first_s:.1f} s)", flush=True)
    model.set_decoding("dynamic")
    res["bytes_per_token"] = bytes_per_token(model, context, args.batch)
    if args.bandwidth and args.device.startswith("cuda"):
        bw = measure_bandwidth(args.device)
        res["bandwidth_bytes_per_s"] = bw
        res["floor_ms_per_token"] = res["bytes_per_token"] / bw * 1e3
    base = res["modes"].get("dynamic", {}).get("ms_per_token")
    for m in res["modes"].values():
        m["speedup_over_dynamic"] = base / m["ms_per_token"] if base else None
        if "floor_ms_per_token" in res:
            m["over_floor"] = m["ms_per_token"] / res["floor_ms_per_token"]
    del model, mem, mem_b
    release(args.device)
    return res


def markdown(result: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    r = result["results"][0] if "results" in result else result
    floor = r.get("floor_ms_per_token")
    head = (f"Decoding from one memory of {r['slots']:,} slots ({r['shape']}, {r['dtype']}, {r['device']}; batch {r['batch']}; "
            f"{r['new_tokens']} new tokens; context {r['context']:,} positions; static cache bucket {r['bucket']})"
            + (f"; floor = weights + KV cache ({r['bytes_per_token'] / 1e9:.2f} GB) at the measured copy bandwidth "
               f"{r['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s = **{floor:.2f} ms/token**" if floor else "") + ":\n\n")
    rows = ["| mode | ms / token | vs dynamic (eager baseline) | x floor | first calls (incl. compile) s | same tokens |",
            "|---|---|---|---|---|---|"]
    for name, m in r["modes"].items():
        rows.append(f"| {name} | {m['ms_per_token']:.2f} | {m['speedup_over_dynamic']:.2f}x | "
                    f"{m['over_floor']:.2f} |" if floor else
                    f"| {name} | {m['ms_per_token']:.2f} | {m['speedup_over_dynamic']:.2f}x | - |")
        rows[-1] += f" {m['first_calls_s']:.1f} | {'yes' if m['same_tokens_as_first_mode'] else 'no'} |"
    return head + "\n".join(rows)


def add_decode_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--slots", type=int, default=None, help="memory slots (default 256 tiny, 2048 otherwise)")
    ap.add_argument("--batch", type=int, default=1, help="rows decoded together")
    ap.add_argument("--new-tokens", type=int, default=None, help="new tokens per row (default 16 tiny, 64 otherwise)")
    ap.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(DECODING_MODES)} "
                                                  "(default: dynamic,static on cpu, all three on cuda)")
    ap.add_argument("--bucket", type=int, default=1024, help="static cache length bucket (1024: the 1- and N-token calls share one graph)")
    ap.add_argument("--bandwidth", action="store_true", help="measure the copy bandwidth (cuda) for the floor")


def resolve_decode_defaults(args: argparse.Namespace) -> None:
    tiny = args.shape == "tiny"
    args.slots = args.slots or (256 if tiny else 2048)
    args.new_tokens = args.new_tokens or (16 if tiny else 64)
    modes = args.modes or ("dynamic,static,compiled" if args.device.startswith("cuda") else "dynamic,static")
    args.modes = modes.split(",") if isinstance(modes, str) else list(modes)
    bad = set(args.modes) - set(DECODING_MODES)
    if bad:
        raise SystemExit(f"unknown decoding modes {sorted(bad)}")


def add_args(ap: argparse.ArgumentParser) -> None:
    add_decode_args(ap)
    ap.add_argument("--repeats", type=int, default=3)


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    resolve_decode_defaults(args)


def run(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    return {"results": [bench_decode(args, tokenizer)]}


def problem(result: dict[str, Any]) -> str | None:
    return None  # the table reports whether the modes' tokens agree (bf16 near-ties may flip)


if __name__ == "__main__":
    sys.exit(main_single(sys.modules[__name__]))
