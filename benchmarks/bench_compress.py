#!/usr/bin/env python
"""Benchmark ICAE compression (batched vs the reference's per-segment loop) and training memory.

Random weights of a real Qwen shape (or a tiny Qwen3 on the CPU), random token ids. Measures:

* ``compress``: ``ICAE.compress_ids`` (all segments of all texts flattened into token-budget
  batches, last hidden state only) against a re-creation of the reference code's loop: one segment
  at a time, ``segment + k memory embeddings`` through the LoRA'd model as a full causal-LM
  forward with ``output_hidden_states=True`` and full-vocabulary logits, slots read off
  ``hidden_states[-1]``. Both run on the same model and input; their slots are compared.
* ``train`` (``--train-memory``): bench_train.py (training-step peak memory, shared decoder vs two copies).

Examples::

    .venv/bin/python benchmarks/bench_compress.py                       # tiny Qwen3, CPU, fp32
    python3 benchmarks/bench_compress.py --shape qwen2.5-7b --device cuda --dtype bf16 \\
        --out results.json --append-md docs/benchmarks.md
    python3 benchmarks/bench_compress.py --shape qwen2.5-0.5b --train-memory --skip-compress
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
from harness import (TEXT_VOCAB, ICAE, ICAEConfig, build_icae, encoder_flops, main_single, measure_roofline,
                     model_fields, release, sync, time_fns)

import bench_train
from hicae.layout import encoder_rows, segment_lengths

TITLE = "compression"


def make_texts(args: argparse.Namespace) -> list[list[int]]:
    """``--segments`` segments of k*r tokens as ``--texts`` texts (ragged: each text a bit shorter)."""
    seg = args.mem_size * args.compression_rate
    if args.segments % args.texts:
        raise SystemExit(f"--segments {args.segments} must be a multiple of --texts {args.texts}")
    per = args.segments // args.texts
    g = torch.Generator().manual_seed(args.seed)
    texts = []
    for i in range(args.texts):
        n = per * seg
        if args.ragged:  # same segment count, uneven segment sizes: text i drops (i+1)/texts of half a segment
            n -= (seg // 2) * (i + 1) // args.texts
        texts.append(torch.randint(0, TEXT_VOCAB, (n,), generator=g).tolist())
    got = sum(len(segment_lengths(len(t), args.mem_size, args.compression_rate)) for t in texts)
    assert got == args.segments, (got, args.segments)
    return texts



def reference_compress(model: ICAE, token_lists: list[list[int]], empty_cache: bool = False) -> list[torch.Tensor]:
    """What the reference code's ``_compress`` does, one text and one segment at a time.

    Each ``segment + k memory embeddings`` runs through the LoRA'd LLM as a full causal-LM forward
    (no attention mask, no position ids, default ``use_cache``), with ``output_hidden_states=True``
    and logits over the whole vocabulary at every position; the slots are ``hidden_states[-1]`` at
    the memory positions. (The reference also calls ``torch.cuda.empty_cache()`` after each
    segment; that is left out here, which only flatters the loop; ``empty_cache`` (``--loop-empty-cache``) adds it.)
    """
    cfg = model.icae_config
    k = cfg.mem_size
    emb = model.encoder.get_base_model().get_input_embeddings()
    mem = model.mem_embeddings  # [k, D]
    out = []
    for ids in token_lists:
        ids_t = torch.tensor(ids, dtype=torch.long, device=model.device).unsqueeze(0)  # [1, L]
        slots = []
        start = 0
        for n in segment_lengths(len(ids), k, cfg.compression_rate):
            seg = emb(ids_t[:, start : start + n])  # [1, n, D]
            x = torch.cat([seg, mem.to(seg.dtype).unsqueeze(0)], dim=1)  # [1, n+k, D]
            res = model.encoder(inputs_embeds=x, output_hidden_states=True)  # logits: [1, n+k, V]
            slots.append(res.hidden_states[-1][0, n : n + k])  # [k, D]
            del res
            if empty_cache and x.is_cuda:
                torch.cuda.empty_cache()
            start += n
        out.append(torch.cat(slots))  # [n_seg*k, D]
    return out



def bench_compress(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    model = build_icae(args, tokenizer)
    model.eval()
    texts = make_texts(args)
    seg_lens = encoder_rows(texts, args.mem_size, args.compression_rate).text_lengths
    n_tokens = sum(len(t) for t in texts)

    fns = [lambda: model.compress_ids(texts), lambda: reference_compress(model, texts, args.loop_empty_cache)]
    compiled = None
    if getattr(args, "compile", False):  # a third contender: the same batched path, encoder torch.compile'd
        def run_compiled() -> Any:
            model.compile_encoder()  # compiles once; later calls switch back to the same compiled function
            try:
                return model.compress_ids(texts)
            finally:
                model.compile_encoder(enabled=False)

        compiled = run_compiled
        t = time.perf_counter()
        with torch.no_grad():
            run_compiled()  # compiles (not timed with the others: a one-off cost, reported apart)
        sync(args.device)
        compile_s = time.perf_counter() - t
        fns.append(run_compiled)
    with torch.no_grad():
        times, outs = time_fns(fns, args.device, args.warmup, args.repeats)
    (t_batched, t_loop), (mem, ref) = times[:2], outs[:2]

    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(mem.slots, ref)]
    mean_diff = statistics.fmean((a.float() - b.float()).abs().mean().item() for a, b in zip(mem.slots, ref))
    scale = max(b.float().abs().max().item() for b in ref)
    max_diff = max(diffs)
    rel = max_diff / scale if scale else float("inf")
    tol = 1e-4 if args.dtype == "fp32" else 5e-2  # relative to the largest slot value
    ms_b, ms_l = statistics.median(t_batched), statistics.median(t_loop)
    flops = encoder_flops(model, seg_lens)
    c = model.base_config
    head_flops = 2.0 * c.vocab_size * c.hidden_size * (n_tokens + len(seg_lens) * args.mem_size)  # the loop's full logits
    res = {
        "kind": "compress",
        **model_fields(args),
        "compress_batch_tokens": args.compress_batch_tokens,
        "texts": args.texts,
        "segments": len(seg_lens),
        "ragged": args.ragged,
        "segment_lengths": sorted(set(seg_lens)),
        "text_tokens": n_tokens,
        "encoder_tokens": n_tokens + len(seg_lens) * args.mem_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "batched_ms": ms_b,
        "loop_ms": ms_l,
        "batched_ms_min": min(t_batched),
        "loop_ms_min": min(t_loop),
        "batched_ms_all": t_batched,
        "loop_ms_all": t_loop,
        "batched_tokens_per_s": n_tokens / ms_b * 1e3,
        "loop_tokens_per_s": n_tokens / ms_l * 1e3,
        "ratio_loop_over_batched": ms_l / ms_b,
        "encoder_tflop": flops / 1e12,
        "batched_tflops": flops / ms_b / 1e9,
        "loop_lm_head_flop_share": head_flops / (head_flops + flops),
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "max_abs_slot": scale,
        "rel_diff": rel,
        "rel_tol": tol,
        "slots_match": bool(rel <= tol),
        "loop_empty_cache": args.loop_empty_cache,
    }
    if compiled is not None:
        ms_c = statistics.median(times[2])
        cd = max((a.float() - b.float()).abs().max().item() for a, b in zip(outs[2].slots, mem.slots))
        res.update(compiled_ms=ms_c, compiled_ms_all=times[2], compile_seconds=compile_s,
                   compiled_tokens_per_s=n_tokens / ms_c * 1e3, compiled_tflops=flops / ms_c / 1e9,
                   ratio_eager_over_compiled=ms_b / ms_c, compiled_rel_diff=cd / scale if scale else float("inf"))
    del model, mem, ref, outs
    release(args.device)
    return res



def compress_markdown(results: list[dict[str, Any]]) -> str:
    rows = ["| shape | dtype | device | k, r, LoRA r | segments (texts) | text tokens | loop ms | batched ms "
            "| loop tok/s | batched tok/s | loop / batched | batched TFLOP/s | max abs diff (rel) | slots match |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r['shape']} | {r['dtype']} | {r['device']} | {r['mem_size']}, {r['compression_rate']}, {r['lora_r']} "
            f"| {r['segments']} ({r['texts']}{', ragged' if r['ragged'] else ''}) | {r['text_tokens']:,} "
            f"| {r['loop_ms']:.1f} | {r['batched_ms']:.1f} | {r['loop_tokens_per_s']:,.0f} "
            f"| {r['batched_tokens_per_s']:,.0f} | **{r['ratio_loop_over_batched']:.2f}x** "
            f"| {r['batched_tflops']:.2f} | {r['max_abs_diff']:.2e} ({r['rel_diff']:.1e}) "
            f"| {'yes' if r['slots_match'] else '**NO**'} |"
        )
    return "\n".join(rows)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--segments", type=int, default=32, help="segments of k*r tokens in all")
    ap.add_argument("--texts", type=int, default=4, help="texts the segments are split into")
    ap.add_argument("--ragged", action="store_true", help="texts shorter than whole segments (uneven segment sizes)")
    ap.add_argument("--compress-batch-tokens", type=int, default=ICAEConfig.compress_batch_tokens)
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs (default 1 on cpu, 2 on cuda)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default 5)")
    ap.add_argument("--loop-empty-cache", action="store_true", help="the loop calls torch.cuda.empty_cache() per segment, as the reference does")
    ap.add_argument("--skip-compress", action="store_true", help="only the training-memory measurement")
    ap.add_argument("--train-memory", action="store_true", help="peak memory of a training step, shared weights vs two copies")
    ap.add_argument("--train-tokens", type=int, default=None, help="AE example length (default 5120 on cuda, 512 on cpu)")
    ap.add_argument("--roofline", action="store_true", help="also measure an 8192^3 bf16 matmul (cuda only)")
    ap.add_argument("--compile", action="store_true", help="also time the batched path with the encoder torch.compile'd")


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    cuda = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.repeats = args.repeats or 5
    args.train_tokens = args.train_tokens or (5120 if cuda else 512)
    if args.skip_compress and not args.train_memory:
        ap.error("--skip-compress leaves nothing to do without --train-memory")


def run(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"results": []}
    if args.roofline and args.device.startswith("cuda"):
        out["roofline_bf16_tflops"] = measure_roofline(args.device)
        print(f"bf16 matmul roofline: {out['roofline_bf16_tflops']:.0f} TFLOP/s", flush=True)
    if not args.skip_compress:
        r = bench_compress(args, tokenizer)
        if "roofline_bf16_tflops" in out:
            r["batched_share_of_roofline"] = r["batched_tflops"] / out["roofline_bf16_tflops"]
        out["results"].append(r)
        print(f"compress: loop {r['loop_ms']:.1f} ms, batched {r['batched_ms']:.1f} ms, ratio {r['ratio_loop_over_batched']:.2f}x, "
              f"max abs diff {r['max_abs_diff']:.2e} (rel {r['rel_diff']:.1e}); full logits are "
              f"{r['loop_lm_head_flop_share']:.0%} of the loop's FLOPs", flush=True)
    if args.train_memory:
        out["results"].append(bench_train.bench_train(args, tokenizer))
    return out


def markdown(result: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    comp = [r for r in result["results"] if r["kind"] == "compress"]
    train = [r for r in result["results"] if r["kind"] == "train"]
    return "\n\n".join(([compress_markdown(comp)] if comp else []) + ([bench_train.train_markdown(train)] if train else []))


def problem(result: dict[str, Any]) -> str | None:
    bad = [r for r in result["results"] if r["kind"] == "compress" and not r["slots_match"]]
    return "batched and loop slots differ beyond tolerance" if bad else None


if __name__ == "__main__":
    sys.exit(main_single(sys.modules[__name__]))
