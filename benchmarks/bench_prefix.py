#!/usr/bin/env python
"""Benchmark "compress once, ask many": answering n questions about one memory with and without the prefix cache.

One memory of ``--slots`` slots (random token ids compressed by a random model), ``n`` questions
(``--questions 1,10,100``) of different lengths, at most ``--new-tokens`` new tokens each (the
table reports how many were generated; random weights rarely hit a stop token). Per ``n``:

* ``uncached``: ``generate_ids(mem, questions, prefix_cache=False)``: one batched call in which
  every row carries the whole ``before [slots] [FT]`` prefix (hicae's path before the cache);
* ``uncached, one per call``: one question per call (each recomputes the prefix);
* ``cached, incl. prefix``: ``model.prefix_cache(mem)`` then one batched call with it (what the
  automatic reuse does in a single call: one prefix pass, then n short rows);
* ``cached, prebuilt``: the call alone, the cache built once beforehand (compress once, ask many
  across calls);
* ``prefix pass``: ``model.prefix_cache(mem)`` alone.

Answers with and without the cache must be equal (else exit code 1).

    .venv/bin/python benchmarks/bench_prefix.py                      # tiny Qwen3, CPU, fp32, 2048 slots
    .venv/bin/python benchmarks/bench_prefix.py --append-md docs/benchmarks.md
    python3 benchmarks/bench_prefix.py --shape qwen2.5-0.5b --device cuda --dtype bf16 --slots 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch
from harness import ICAE, build_icae, main_single, timed

TITLE = "prefix cache (compress once, ask many)"

TOPICS = ["the river", "the second paragraph", "its author", "the numbers in the table", "the conclusion",
          "the dates mentioned", "who signed it and why", "the main argument, in one sentence", "the title"]


def questions(n: int) -> list[str]:
    """n distinct questions of different lengths."""
    return [f"Question {i}: what does the text say about {TOPICS[i % len(TOPICS)]}" + "?" * (1 + i % 3) for i in range(n)]


def build(args: argparse.Namespace, tokenizer: Any) -> ICAE:
    """A random ICAE (peft's zero lora_B) that takes a memory of ``args.slots`` slots."""
    return build_icae(args, tokenizer, random_lora_b=False, max_length=args.slots * args.compression_rate).eval()


def bench(args: argparse.Namespace, tokenizer: Any) -> list[dict[str, Any]]:
    model = build(args, tokenizer)
    if args.slots % args.mem_size:
        raise SystemExit(f"--slots {args.slots} must be a multiple of k={args.mem_size}")
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, 150000, (args.slots * args.compression_rate,), generator=g).tolist()
    with torch.no_grad():
        mem = model.compress_ids([ids])
    assert mem.num_slots == [args.slots], mem.num_slots
    prefix_len = model.tokens.ft_example(args.slots, "", None).ids.index(-4) + 1
    kw = dict(max_new_tokens=args.new_tokens)
    prebuilt = model.prefix_cache(mem)
    results = []
    for n in args.questions:
        qs = questions(n)
        rest = [len(model.tokens.chat_pieces(q)[1]) for q in qs]
        reps = args.repeats
        prefix_ms, _ = timed(lambda: model.prefix_cache(mem), args.device, args.warmup, reps)
        unc_ms, unc = timed(lambda: model.generate_ids(mem, qs, prefix_cache=False, **kw), args.device, args.warmup, reps)
        loop_ms = None
        if n <= args.loop_max:
            loop_ms, loop = timed(lambda: [model.generate_ids(mem, q, prefix_cache=False, **kw)[0] for q in qs],
                                  args.device, min(args.warmup, 1), max(1, reps // 2))
        inc_ms, inc = timed(lambda: model.generate_ids(mem, qs, prefix_cache=model.prefix_cache(mem), **kw),
                            args.device, args.warmup, reps)
        pre_ms, pre = timed(lambda: model.generate_ids(mem, qs, prefix_cache=prebuilt, **kw), args.device, args.warmup, reps)
        same = unc == inc == pre and (loop_ms is None or loop == unc)
        r = dict(questions=n, slots=args.slots, prefix_tokens=prefix_len, prompt_tokens_mean=statistics.mean(rest),
                 new_tokens=args.new_tokens, generated_tokens=sum(map(len, unc)), prefix_ms=prefix_ms, uncached_ms=unc_ms, uncached_loop_ms=loop_ms,
                 cached_incl_prefix_ms=inc_ms, cached_prebuilt_ms=pre_ms, speedup_incl=unc_ms / inc_ms,
                 speedup_prebuilt=unc_ms / pre_ms, same_answers=same, cache_bytes=prebuilt.nbytes)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        results.append(r)
    return results


def markdown(result: dict[str, Any] | list[dict[str, Any]], args: argparse.Namespace) -> str:
    results = result["results"] if isinstance(result, dict) else result
    r0 = results[0]
    head = (f"{args.shape}, {args.dtype}, {args.device}; one memory of {r0['slots']:,} slots (k={args.mem_size}, "
            f"r={args.compression_rate}: {r0['slots'] * args.compression_rate:,} text tokens); cached prefix "
            f"`before [slots] [FT]` = {r0['prefix_tokens']:,} positions ({r0['cache_bytes'] / 2**20:.1f} MiB of KV); "
            f"at most {r0['new_tokens']} new tokens per question; median ms of {args.repeats} runs (one call per question: "
            f"{max(1, args.repeats // 2)}).\n\n")
    table = ("| questions | prompt tokens (mean) | new tokens (all rows) | uncached, one batched call | uncached, one call per question "
             "| cached, incl. prefix pass | cached, prebuilt | prefix pass alone | uncached / cached incl. "
             "| uncached / prebuilt | same answers |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        loop = f"{r['uncached_loop_ms']:,.1f}" if r["uncached_loop_ms"] is not None else "-"
        table += (f"\n| {r['questions']} | {r['prompt_tokens_mean']:.1f} | {r['generated_tokens']} | {r['uncached_ms']:,.1f} | {loop} "
                  f"| {r['cached_incl_prefix_ms']:,.1f} | {r['cached_prebuilt_ms']:,.1f} | {r['prefix_ms']:,.1f} "
                  f"| **{r['speedup_incl']:.1f}x** | **{r['speedup_prebuilt']:.1f}x** | {'yes' if r['same_answers'] else '**NO**'} |")
    return head + table


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--slots", type=int, default=2048, help="slots of the memory (a multiple of k)")
    ap.add_argument("--questions", default="1,10,100", help="comma-separated question counts")
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--loop-max", type=int, default=100, help="time one-call-per-question only up to this many questions")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    if isinstance(args.questions, str):
        args.questions = [int(x) for x in args.questions.split(",")]


def run(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit("questions need a chat template: the Qwen3 tokenizer (see benchmarks/README.md)")
    return {"results": bench(args, tokenizer)}


def problem(result: dict[str, Any]) -> str | None:
    return None if all(r["same_answers"] for r in result["results"]) else "answers with and without the cache differ"


if __name__ == "__main__":
    sys.exit(main_single(sys.modules[__name__]))
