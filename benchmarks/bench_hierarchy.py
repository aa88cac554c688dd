#!/usr/bin/env python
"""Benchmark hierarchical compression at scale: time and peak memory from 1k to 1M tokens.

``HierarchicalICAE.compress_ids([ids], max_slots=...)`` on one text of random token ids, under
``model.eval_mode()`` (eval + no_grad), for each length in ``--lengths``, once with a slot budget
(``--max-slots``, default 16 blocks' worth: 256 slots for the tiny shape's k=16) and once without
one. A random tiny Qwen3 on the CPU by default (hidden 64, 2 layers; k=16, r=4, LoRA r=4; L=4
levels, g=2); ``--shape qwen2.5-0.5b --device cuda --dtype bf16`` for a real shape on a GPU (the
shape builder is ``harness.build_base``). Measures per length and budget:

* wall time (median of the runs) and tokens/s, time per token; the ratio of the largest to the
  smallest per-token time and the log-log slope of time vs tokens check that time is linear;
* where the time goes: level-1 segment encoding, merges (encoder calls of the merge waves), the
  pure-Python merge plan (``push_segments`` + ``waves``) and the rest, by wrapping those functions
  for the run (no change to hicae); encoder forward calls and merge waves are counted;
* the resulting slots, blocks and levels (slots must be <= the budget: exit code 1 otherwise), and
  the span of the largest block (under a budget with capped levels, the oldest block absorbs the
  past);
* peak memory of the call: on the CPU the peak resident set size above the RSS right before it
  (kernel high-water mark reset through /proc/self/clear_refs where allowed, plus a thread
  sampling /proc/self/statm every few ms; freed heap is trimmed before each run so the baseline
  is honest); on CUDA ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` before.

Lengths run in increasing order, after a warm-up. CPU default: 1 torch thread (``--threads``): on
a small machine shared with other jobs, 2 threads were 4-10x slower than 1 whenever another process
was busy (OpenMP threads waiting on each other). The load average is recorded per point.

Examples::

    .venv/bin/python benchmarks/bench_hierarchy.py --out /tmp/hier.json \\
        --append-md docs/benchmarks_hierarchy.md --plot docs/hierarchy_scale.png
    .venv/bin/python benchmarks/bench_hierarchy.py --lengths 1k,16k --repeats 1      # quick
    python3 benchmarks/bench_hierarchy.py --shape qwen2.5-0.5b --device cuda --dtype bf16 \\
        --lengths 1k,8k,32k,128k --out hier_gpu.json --append-md hier_gpu.md --plot hier_gpu.png
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from harness import TEXT_VOCAB, PeakMemory, build_icae, main_single, release, sync, trim_heap

import hicae.hierarchy.model as hier_mod
from hicae import HierarchicalICAE, HierarchyConfig, ICAEConfig

TITLE = "hierarchical compression at scale"

DEFAULT_LENGTHS = "1k,4k,16k,64k,256k,1M"
MiB = 2**20


def parse_length(s: str) -> int:
    """'1k' = 1024 tokens, '1M' = 1024**2; plain integers as they are."""
    s = s.strip()
    mult = {"k": 1024, "K": 1024, "m": 1024**2, "M": 1024**2}.get(s[-1:], 1)
    n = int(float(s[:-1] if mult > 1 else s) * mult)
    if n < 1:
        raise argparse.ArgumentTypeError(f"length {s!r} must be >= 1 token")
    return n


def fmt_tokens(n: int) -> str:
    for unit, v in (("M", 1024**2), ("k", 1024)):
        if n >= v and n % v == 0:
            return f"{n // v}{unit}"
    return f"{n:,}"


# --------------------------------------------------------------------------------------------
# model


def build_hicae(args: argparse.Namespace, tokenizer: Any) -> HierarchicalICAE:
    hcfg = HierarchyConfig(levels=args.levels, group_size=args.group_size, max_text_tokens=max(1 << 21, max(args.lengths)))
    return build_icae(args, tokenizer, cls=HierarchicalICAE, hierarchy=hcfg).eval()


# --------------------------------------------------------------------------------------------
# where the time goes


class Breakdown:
    """Time spent in the parts of ``HierarchicalICAE._advance``, by wrapping them for a run.

    ``level1``: ``_encode_segments`` (segment rows, padding and their encoder calls: the last one
    is the trailing partial segment); ``merges``: ``_run_merges`` (merge waves: ``waves`` plus one
    batched encoder call each); ``plan``: ``push_segments`` + ``waves`` (pure Python);
    ``to_memory``: assembling the Memory. The rest of the wall time is ``_advance``'s own Python
    (slicing the token list, filtering retained slots). On CUDA every wrapper synchronises.
    """

    def __init__(self, model: HierarchicalICAE, device: str):
        self.model = model
        self.cuda = device.startswith("cuda")
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                if self.cuda:
                    torch.cuda.synchronize()
                self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
                self.n[name] = self.n.get(name, 0) + 1

        return wrapped

    def __enter__(self) -> "Breakdown":
        m = self.model
        for name in ("_encode_segments", "_run_merges", "encode_blocks", "_to_memory"):
            setattr(m, name, self._wrap(name, getattr(m, name)))  # instance attribute shadows the method
        self._orig = {k: getattr(hier_mod, k) for k in ("push_segments", "waves")}
        for k, fn in self._orig.items():
            setattr(hier_mod, k, self._wrap(k, fn))
        inner = m.encoder.get_base_model().model

        def count(*_: Any) -> None:
            self.n["encoder_forward"] = self.n.get("encoder_forward", 0) + 1

        self._hook = inner.register_forward_pre_hook(count)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in ("_encode_segments", "_run_merges", "encode_blocks", "_to_memory"):
            vars(self.model).pop(name, None)  # the instance attributes __enter__ set
        for k, fn in self._orig.items():
            setattr(hier_mod, k, fn)
        self._hook.remove()

    def summary(self, wall: float) -> dict[str, Any]:
        t, n = self.t, self.n
        plan = t.get("push_segments", 0.0) + t.get("waves", 0.0)
        level1 = t.get("_encode_segments", 0.0)
        merges = t.get("_run_merges", 0.0)
        to_mem = t.get("_to_memory", 0.0)
        # waves runs inside _run_merges: count it once, under plan
        parts = {
            "level1_s": level1,
            "merge_encoder_s": merges - t.get("waves", 0.0),
            "plan_s": plan,
            "to_memory_s": to_mem,
        }
        parts["other_s"] = wall - sum(parts.values())
        return {
            **parts,
            "rounds": max(0, n.get("push_segments", 0)),
            "level1_encoder_calls": n.get("_encode_segments", 0),
            "merge_waves": n.get("encode_blocks", 0),
            "encoder_forward_calls": n.get("encoder_forward", 0),
        }


# --------------------------------------------------------------------------------------------
# one point


def blocks_ok(blocks: list[list[int]], num_segments: int) -> bool:
    """Retained blocks tile segments 0..num_segments-1 in order, with no gap or overlap."""
    pos = 0
    for _, a, b in blocks:
        if a != pos or b <= a:
            return False
        pos = b
    return pos == num_segments


def run_point(model: HierarchicalICAE, ids: list[int], max_slots: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """Time ``compress_ids`` on one text; the first run decides whether it is repeated."""
    times: list[float] = []
    cpu_times: list[float] = []
    peaks: list[PeakMemory] = []
    splits: list[dict[str, Any]] = []
    mem = None
    while True:
        mem = None
        trim_heap()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        pm = PeakMemory(args.device)
        bd = Breakdown(model, args.device)
        with model.eval_mode(), pm, bd:
            sync(args.device)
            c0, t0 = time.process_time(), time.perf_counter()
            mem = model.compress_ids([ids], max_slots=max_slots)
            sync(args.device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        times.append(dt)
        cpu_times.append(dc)
        peaks.append(pm)
        splits.append(bd.summary(dt))
        if len(times) >= args.repeats or sum(times) + times[0] > args.repeat_budget_s:
            break
    assert mem is not None
    k = model.icae_config.mem_size
    S = model.icae_config.segment_tokens
    slots = mem.num_slots[0]
    blocks = mem.blocks[0]
    spans = [(b - a) * S for _, a, b in blocks]
    med = statistics.median(times)
    i_med = min(range(len(times)), key=lambda i: abs(times[i] - med))
    n = len(ids)
    worst = max(peaks, key=lambda p: p.increase)
    res = {
        "max_slots": max_slots,
        "budget_blocks": model.budget_blocks(max_slots),
        "text_tokens": n,
        "segments": mem.num_segments[0],
        "runs": len(times),
        "seconds": med,
        "seconds_min": min(times),
        "seconds_all": times,
        "tokens_per_s": n / med,
        "us_per_token": med / n * 1e6,
        # CPU time of the process (all its threads) in the median-wall run: with 1 torch thread it
        # is steadier than wall time on a machine shared with other jobs
        "cpu_seconds": cpu_times[i_med],
        "cpu_us_per_token": cpu_times[i_med] / n * 1e6,
        "slots": slots,
        "blocks": len(blocks),
        "levels": mem.levels,
        "block_levels": sorted({b[0] for b in blocks}),
        "largest_block_tokens": max(spans),
        "largest_block_share": max(spans) / n,
        "within_budget": max_slots is None or slots <= max_slots,
        "blocks_tile_text": blocks_ok(blocks, mem.num_segments[0]),
        "slots_per_block_ok": slots == len(blocks) * k,
        "peak_bytes_above_baseline": worst.increase,
        "peak_bytes_above_baseline_all": [p.increase for p in peaks],
        "baseline_bytes": worst.baseline,
        "peak_bytes": worst.peak,
        "sampled_peak_bytes_above_baseline": worst.sampled_peak - worst.baseline,
        "memory_metric": worst.method,
        "slot_bytes": int(mem.slots[0].numel() * mem.slots[0].element_size()),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "breakdown": splits[i_med],
    }
    del mem
    return res


def linearity(points: list[dict[str, Any]], from_tokens: int, key: str = "seconds") -> dict[str, Any]:
    us = [p[key] / p["text_tokens"] for p in points]
    out: dict[str, Any] = {
        "per_token_max_over_min": max(us) / min(us),
        "per_token_largest_over_smallest_length": us[-1] / us[0],
    }
    for name, pts in (("loglog_slope", points), ("loglog_slope_large", [p for p in points if p["text_tokens"] >= from_tokens])):
        if len(pts) >= 2:
            x = [math.log(p["text_tokens"]) for p in pts]
            y = [math.log(p[key]) for p in pts]
            mx, my = statistics.fmean(x), statistics.fmean(y)
            out[name] = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
        else:
            out[name] = None
    out["large_from_tokens"] = from_tokens
    out["time"] = key
    return out


# --------------------------------------------------------------------------------------------
# reporting


def budget_label(max_slots: int | None) -> str:
    return "none" if max_slots is None else str(max_slots)


def markdown(report: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    cfg = report["config"]
    cuda = report["config"]["device"].startswith("cuda")
    mem_col = "peak GPU mem above start MiB" if cuda else "peak RSS above start MiB"
    lines = [
        f"{cfg['shape']} ({cfg['dtype']}, {cfg['device']}), k={cfg['mem_size']}, r={cfg['compression_rate']}, "
        f"LoRA r={cfg['lora_r']}, levels={cfg['levels']}, g={cfg['group_size']}, "
        f"compress_batch_tokens={cfg['compress_batch_tokens']}; one text of random ids; time = median of the runs; "
        "split of the median run: level-1 encoding / merge encoder calls / merge plan (Python) / rest.",
        "",
        f"| budget (slots) | tokens | segments | runs | seconds | tokens/s | µs/token |{'' if cuda else ' CPU-time µs/token |'} "
        f"slots | blocks (levels) | largest block | {mem_col} | encoder calls (merge waves) | split L1/merge/plan/rest | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("" if cuda else "---|"),
    ]
    for r in report["results"]:
        b = r["breakdown"]
        wall = sum(b[k] for k in ("level1_s", "merge_encoder_s", "plan_s", "to_memory_s", "other_s"))
        pct = lambda v: f"{100 * v / wall:.0f}" if wall > 0 else "-"  # noqa: E731
        flag = "" if r["within_budget"] and r["blocks_tile_text"] else " **BAD**"
        cpu_col = "" if cuda else f" {r['cpu_us_per_token']:.1f} |"
        lines.append(
            f"| {budget_label(r['max_slots'])} | {fmt_tokens(r['text_tokens'])} | {r['segments']:,} | {r['runs']} "
            f"| {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | {r['us_per_token']:.1f} "
            f"|{cpu_col} {r['slots']:,}{flag} "
            f"| {r['blocks']:,} ({r['levels']}) | {r['largest_block_share']:.0%} "
            f"| {r['peak_bytes_above_baseline'] / MiB:.1f} | {b['encoder_forward_calls']:,} ({b['merge_waves']:,}) "
            f"| {pct(b['level1_s'])}/{pct(b['merge_encoder_s'])}/{pct(b['plan_s'])}/{pct(b['other_s'] + b['to_memory_s'])}% "
            f"| {r['loadavg_1min']:.1f} |"
        )
    lines.append("")
    for key, lin in report["linearity"].items():
        if lin["loglog_slope"] is None:  # one length: nothing to compare
            continue
        slope_l = lin["loglog_slope_large"]
        large = slope_l is not None and lin["large_from_tokens"] > min(r["text_tokens"] for r in report["results"])
        cpu = lin.get("cpu_time")
        lines.append(
            f"- budget {key}: per-token time max/min over lengths **{lin['per_token_max_over_min']:.2f}x** "
            f"(largest/smallest length {lin['per_token_largest_over_smallest_length']:.2f}x); log-log slope of time vs "
            f"tokens **{lin['loglog_slope']:.2f}** over all lengths"
            + (f", {slope_l:.2f} from {fmt_tokens(lin['large_from_tokens'])} tokens" if large else "")
            + " (1 = linear)"
            + (f"; in CPU time: max/min {cpu['per_token_max_over_min']:.2f}x, slope {cpu['loglog_slope']:.2f}"
               + (f", {cpu['loglog_slope_large']:.2f} from {fmt_tokens(cpu['large_from_tokens'])}" if large else "") if cpu else "")
            + "."
        )
    return "\n".join(lines)


def plot(path: str, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        by.setdefault(budget_label(r["max_slots"]), []).append(r)
    cuda = report["env"]["device"].startswith("cuda")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for (key, pts), m, c in zip(by.items(), "os^v", ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        x = [p["text_tokens"] for p in pts]
        label = f"budget {key} slots" if key != "none" else "no budget"
        ax1.loglog(x, [p["seconds"] for p in pts], marker=m, color=c, label=f"{label}: wall")
        if not cuda:
            ax1.loglog(x, [p["cpu_seconds"] for p in pts], marker=m, color=c, ls=":", alpha=0.7, mfc="none", label=f"{label}: CPU time")
        ax2.semilogx(x, [p["peak_bytes_above_baseline"] / MiB for p in pts], marker=m, color=c, label=f"{label}: peak during the call")
        ax2.semilogx(x, [p["slot_bytes"] / MiB for p in pts], marker=m, color=c, ls=":", alpha=0.7, mfc="none", label=f"{label}: resulting slots")
    first = report["results"]
    xs = sorted({p["text_tokens"] for p in first})
    ref = max(first, key=lambda p: (p["text_tokens"], -p["seconds"]))  # anchor at the largest length
    ax1.loglog(xs, [ref["seconds"] * x / ref["text_tokens"] for x in xs], "k--", lw=1, alpha=0.6, label="linear (through the largest point)")
    cfg = report["config"]
    round_tokens = cfg["segments_per_round"] * cfg["mem_size"] * cfg["compression_rate"]
    ax2.axvline(round_tokens, color="gray", lw=1, ls="--")
    ax2.annotate(f"one streaming round\n({round_tokens:,} tokens)", (round_tokens, 0.5), xycoords=("data", "axes fraction"),
                 xytext=(4, 0), textcoords="offset points", fontsize=8, color="gray")
    ax1.set_xlabel("text tokens")
    ax1.set_ylabel("compress_ids wall time (s)")
    ax1.set_title("time")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("text tokens")
    ax2.set_ylabel(("peak GPU memory" if cuda else "peak RSS") + " above start (MiB)")
    ax2.set_title("peak memory during the call")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    env = report["env"]
    fig.suptitle(
        f"HierarchicalICAE.compress_ids: {cfg['shape']} {cfg['dtype']} on {env['device_name']} "
        f"(k={cfg['mem_size']}, r={cfg['compression_rate']}, L={cfg['levels']}, g={cfg['group_size']}), {env['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"text lengths in tokens, comma-separated; k=1024, M=1024^2 (default {DEFAULT_LENGTHS})")
    ap.add_argument("--max-slots", "--max_slots", dest="max_slots", type=int, default=None,
                    help="slot budget of the budgeted runs (default 16*k: 256 for the tiny shape)")
    ap.add_argument("--skip-unbudgeted", action="store_true", help="only the runs with a budget")
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--compress-batch-tokens", type=int, default=ICAEConfig.compress_batch_tokens,
                    help="encoder token budget per batch; also bounds a streaming round (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="most timed runs per point (median reported)")
    ap.add_argument("--repeat-budget-s", type=float, default=8.0,
                    help="repeat a point only while its runs would stay under this many seconds (default %(default)s)")
    ap.add_argument("--warmup-tokens", type=int, default=None,
                    help="untimed warm-up text per budget (default: two streaming rounds and a bit, at most the longest length)")
    ap.add_argument("--plot", default=None, help="write a PNG: log-log time vs tokens, peak memory vs tokens")


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    args.max_slots = args.max_slots or 16 * args.mem_size
    try:
        args.lengths = sorted({parse_length(s) for s in args.lengths.split(",") if s.strip()})
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(f"--lengths: {e}")
    if not args.lengths:
        ap.error("--lengths is empty")


def run(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    print(f"lengths {[fmt_tokens(n) for n in args.lengths]}", flush=True)
    model = build_hicae(args, tokenizer)
    cfg = model.icae_config
    budgets: list[int | None] = [args.max_slots] + ([] if args.skip_unbudgeted else [None])
    for b in budgets:
        model.budget_blocks(b)  # a bad budget fails here, before any timing

    g = torch.Generator().manual_seed(args.seed)
    per_round = max(1, cfg.compress_batch_tokens // (cfg.segment_tokens + cfg.mem_size))
    warm = args.warmup_tokens or min(max(args.lengths), 2 * per_round * cfg.segment_tokens + cfg.segment_tokens // 2)
    warm_ids = torch.randint(0, TEXT_VOCAB, (warm,), generator=g).tolist()
    t0 = time.perf_counter()
    with model.eval_mode():
        for b in budgets:
            model.compress_ids([warm_ids], max_slots=b)
    sync(args.device)
    print(f"warm-up: {fmt_tokens(warm)} tokens per budget, {time.perf_counter() - t0:.1f} s", flush=True)
    del warm_ids

    results = []
    for n in args.lengths:
        ids = torch.randint(0, TEXT_VOCAB, (n,), generator=g).tolist()
        for b in budgets:
            r = run_point(model, ids, b, args)
            results.append(r)
            bd = r["breakdown"]
            print(
                f"{fmt_tokens(n):>5} budget {budget_label(b):>4}: {r['seconds']:8.3f} s ({r['runs']} runs) "
                f"{r['tokens_per_s']:>10,.0f} tok/s {r['us_per_token']:6.1f} us/tok | slots {r['slots']:,} blocks {r['blocks']} "
                f"levels {r['levels']} | peak +{r['peak_bytes_above_baseline'] / MiB:.1f} MiB | "
                f"L1 {bd['level1_s']:.2f} merge {bd['merge_encoder_s']:.2f} plan {bd['plan_s']:.2f} other {bd['other_s'] + bd['to_memory_s']:.2f} s, "
                f"{bd['encoder_forward_calls']} fwd, {bd['merge_waves']} waves | load {r['loadavg_1min']:.1f}",
                flush=True,
            )
        del ids
    model_params = sum(p.numel() for p in model.parameters())

    large_from = 16 * 1024 if max(args.lengths) >= 64 * 1024 else min(args.lengths)
    lin = {}
    for b in budgets:
        pts = [r for r in results if r["max_slots"] == b]
        lin[budget_label(b)] = linearity(pts, large_from)
        if args.device == "cpu":
            lin[budget_label(b)]["cpu_time"] = linearity(pts, large_from, "cpu_seconds")
    del model
    release(args.device)
    return {
        "config": {
            "shape": args.shape, "dtype": args.dtype, "device": args.device, "model_params": model_params,
            "mem_size": cfg.mem_size, "compression_rate": cfg.compression_rate, "lora_r": cfg.lora_r,
            "levels": args.levels, "group_size": args.group_size,
            "compress_batch_tokens": cfg.compress_batch_tokens, "segments_per_round": per_round,
            "max_slots": args.max_slots, "budgets": [budget_label(b) for b in budgets],
            "warmup_tokens": warm, "repeats": args.repeats, "repeat_budget_s": args.repeat_budget_s,
        },
        "results": results,
        "linearity": lin,
    }


def after(args: argparse.Namespace, env: dict[str, Any], report: dict[str, Any]) -> None:
    if args.plot:
        plot(args.plot, {"env": env, **report})


def problem(report: dict[str, Any]) -> str | None:
    bad = [r for r in report["results"] if not (r["within_budget"] and r["blocks_tile_text"] and r["slots_per_block_ok"])]
    return f"{len(bad)} point(s) over budget or with blocks that do not tile the text" if bad else None


if __name__ == "__main__":
    sys.exit(main_single(sys.modules[__name__]))
