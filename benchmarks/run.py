#!/usr/bin/env python
"""The benchmark runner: every speed figure of hicae beside its baseline, measured in one process.

Sections (``--sections``, default all):

* ``compress``: batched compression (``ICAE.compress_ids``) vs the reference-style loop (one
  segment at a time, full logits); input tokens/s; with ``--roofline`` (GPU) the share of the bf16
  matmul roofline measured in the same run; with ``--compile`` also the torch.compile'd encoder.
* ``prefix``: answering 1/10/100 questions about one memory with the prefix cache vs recomputing
  the prefix for every question (bench_prefix.py).
* ``decode``: ms per new token of static-cache and compiled decoding vs transformers' eager loop
  (bench_decode.py); with ``--bandwidth`` (GPU) against the weight + KV read floor.
* ``train``: one training step (one AE example of ``--train-tokens`` tokens, gradient
  checkpointing): time, peak memory and model FLOPs utilisation, the shared-weights decoder vs two
  model copies (bench_train.py).
* ``hierarchy`` and ``gap`` (not in the default set): bench_hierarchy.py and
  probes/probe_compress_gap.py with their own defaults on the model chosen here (run them on their own
  for their other flags).

Each section is a module with the same interface (see ``harness.main_single``), so every file
also runs on its own; model flags, model building, timing, memory and reports live in harness.py.

Writes ``results.json`` and ``results.md`` into ``--out-dir`` after every section (a later
failure keeps the earlier numbers); ``--append-md docs/benchmarks.md`` appends the markdown with
command, device, versions and date. Exit code 1 if a section failed or a check (equal outputs) did.

    .venv/bin/python benchmarks/run.py --out-dir /tmp/bench          # tiny Qwen3, CPU, fp32 (< 2 min)
    python3 benchmarks/run.py --shape qwen2.5-7b --roofline --compile --bandwidth --out-dir out/7b
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb  # noqa: E402  (puts src/ on the path when hicae is not installed)

import bench_compress as bc  # noqa: E402
import bench_decode as bd  # noqa: E402
import bench_prefix as bp  # noqa: E402
import bench_hierarchy  # noqa: E402
import bench_train as bt  # noqa: E402
from probes import probe_compress_gap  # noqa: E402  (benchmarks/probes/)
from hicae.config import ICAEConfig  # noqa: E402
from hicae.io.fileio import write_text_atomic  # noqa: E402

SECTIONS = ("compress", "prefix", "decode", "train")
OWN_DEFAULTS = {"hierarchy": bench_hierarchy, "gap": probe_compress_gap}  # sections run with their module's defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    hb.add_model_args(ap)
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all), or also {','.join(OWN_DEFAULTS)}")
    ap.add_argument("--out-dir", required=True, help="results.json and results.md go here")
    ap.add_argument("--append-md", default=None, help="also append the markdown to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    g = ap.add_argument_group("compress")
    g.add_argument("--segments", type=int, default=32)
    g.add_argument("--texts", type=int, default=4)
    g.add_argument("--compress-batch-tokens", type=int, default=ICAEConfig.compress_batch_tokens)
    g.add_argument("--roofline", action="store_true", help="measure the bf16 matmul roofline (cuda)")
    g.add_argument("--compile", action="store_true", help="also time the torch.compile'd encoder")
    g = ap.add_argument_group("prefix")
    g.add_argument("--prefix-slots", type=int, default=None, help="memory slots (default 2048 tiny, 1024 otherwise)")
    g.add_argument("--questions", default="1,10,100")
    g = ap.add_argument_group("decode")
    bd.add_decode_args(g)
    g = ap.add_argument_group("train")
    g.add_argument("--train-tokens", type=int, default=None, help="AE example length (default 5120 on cuda, 512 on cpu)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    hb.resolve_model_defaults(args)
    bd.resolve_decode_defaults(args)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU")
    args.sections = [s for s in args.sections.split(",") if s]
    bad = set(args.sections) - set(SECTIONS) - set(OWN_DEFAULTS)
    if bad:
        ap.error(f"unknown sections {sorted(bad)}")
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.repeats = args.repeats or (5 if cuda else 3)
    args.train_tokens = args.train_tokens or (5120 if cuda else 512)
    args.ragged = False
    args.loop_max = 100
    args.loop_empty_cache = False
    return args


def prefix_args(args: argparse.Namespace) -> argparse.Namespace:
    a = argparse.Namespace(**vars(args))
    a.slots = args.prefix_slots or (2048 if args.shape == "tiny" else 1024)
    a.questions = [int(x) for x in args.questions.split(",")]
    a.new_tokens = 4
    a.warmup, a.repeats = 1, 3
    return a


def summary_rows(res: dict[str, Any]) -> list[str]:
    """One line per headline figure: hicae, baseline, ratio."""
    rows = []
    c = res.get("compress")
    if c:
        roof = f"; {c['batched_share_of_roofline']:.0%} of the bf16 roofline" if "batched_share_of_roofline" in c else ""
        rows.append(f"| compression, input tokens/s | {c['batched_tokens_per_s']:,.0f}{roof} | loop {c['loop_tokens_per_s']:,.0f} "
                    f"| **{c['ratio_loop_over_batched']:.2f}x** |")
        if "compiled_ms" in c:
            roofc = (f"; {c['compiled_tflops'] / res['roofline_bf16_tflops']:.0%} of the roofline"
                     if res.get("roofline_bf16_tflops") else "")
            rows.append(f"| compression, torch.compile'd encoder, tokens/s | {c['compiled_tokens_per_s']:,.0f}{roofc} "
                        f"| eager batched {c['batched_tokens_per_s']:,.0f} | **{c['ratio_eager_over_compiled']:.2f}x** |")
    for p in res.get("prefix", []):
        # the fairer of the two uncached ways: one batched call, or one call per question
        base, how = min((p["uncached_ms"], "one batched call"),
                        (p["uncached_loop_ms"] or float("inf"), "one call per question"))
        rows.append(f"| {p['questions']} question(s) about one memory, ms | cached (incl. prefix pass) "
                    f"{p['cached_incl_prefix_ms']:,.1f} | prefix recomputed, {how} {base:,.1f} "
                    f"| **{base / p['cached_incl_prefix_ms']:.1f}x** |")
    d = res.get("decode")
    if d:
        base = d["modes"].get("dynamic")
        for name, m in d["modes"].items():
            if name == "dynamic":
                continue
            fl = f" ({m['over_floor']:.2f}x the floor {d['floor_ms_per_token']:.2f})" if "over_floor" in m else ""
            rows.append(f"| decode ms/token, {name} | {m['ms_per_token']:.2f}{fl} | eager dynamic {base['ms_per_token']:.2f} "
                        f"| **{m['speedup_over_dynamic']:.2f}x** |" if base else f"| decode ms/token, {name} | {m['ms_per_token']:.2f} | - | - |")
    t = res.get("train")
    if t:
        s, two = t["shared"], t["two_copies"]
        what = "peak GPU memory" if t["device"].startswith("cuda") else "peak RSS (CPU stand-in)"
        rows.append(f"| training step ({t['train_tokens']:,} tokens), {what}, GiB | {hb.gib(s['peak_bytes'])} "
                    f"| two copies {hb.gib(two['peak_bytes'])} | **{t['peak_ratio_two_copies_over_shared']:.2f}x** |")
        mfu = f"; MFU {s['mfu']:.0%}" if "mfu" in s else ""
        rows.append(f"| training step time, ms | {s['step_ms']:,.0f}{mfu} | two copies {two['step_ms']:,.0f} "
                    f"| {two['step_ms'] / s['step_ms']:.2f}x |")
    return rows


def markdown(res: dict[str, Any]) -> str:
    parts = ["| figure | hicae | baseline (same run) | ratio |\n|---|---|---|---|\n" + "\n".join(summary_rows(res))]
    if res.get("roofline_bf16_tflops"):
        parts.append(f"bf16 matmul roofline measured in this run: {res['roofline_bf16_tflops']:.0f} TFLOP/s.")
    if "compress" in res:
        parts.append(bc.compress_markdown([res["compress"]]))
    if "prefix" in res:
        parts.append(bp.markdown(res["prefix"], res["_prefix_args"]))
    if "decode" in res:
        parts.append(bd.markdown(res["decode"]))
    if "train" in res:
        t = res["train"]
        s = t["shared"]
        extra = ""
        if "mfu" in s:
            extra = (f"\n\nMFU = model FLOPs of the step ({s['model_flop'] / 1e12:.1f} TFLOP: forward + backward to the "
                     f"activations over {s['encoder_tokens']:,} encoder and {s['decoder_tokens']:,} decoder positions; "
                     "frozen weights need no weight gradients; checkpointing's recomputation not counted) / step time / "
                     f"measured roofline = {s['mfu']:.0%} (two copies: {t['two_copies']['mfu']:.0%}).")
        parts.append(bt.train_markdown([t]) + extra)
    parts += [res[f"_{s}_md"] for s in OWN_DEFAULTS if f"_{s}_md" in res]
    if res.get("errors"):
        parts.append("Failed sections:\n\n" + "\n".join(f"- {k}: `{v.splitlines()[-1]}`" for k, v in res["errors"].items()))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, kind = hb.load_tokenizer(args.tokenizer)
    env = hb.environment(args, kind)
    print(f"# {env['device_name']} | torch {env['torch']} | transformers {env['transformers']} | {args.shape} {args.dtype}", flush=True)
    res: dict[str, Any] = {"env": env, "errors": {}}
    cuda = args.device.startswith("cuda")
    t_all = time.perf_counter()

    def save() -> None:
        env["seconds"] = time.perf_counter() - t_all
        data = {k: v for k, v in res.items() if not k.startswith("_")}
        write_text_atomic(out / "results.json", json.dumps(data, indent=2, default=str) + "\n")
        write_text_atomic(out / "results.md", markdown(res))

    if args.roofline and cuda:
        res["roofline_bf16_tflops"] = hb.measure_roofline(args.device)
        print(f"roofline {res['roofline_bf16_tflops']:.0f} TFLOP/s", flush=True)
    for section in args.sections:
        t = time.perf_counter()
        try:
            if section == "compress":
                r = bc.bench_compress(args, tokenizer)
                if res.get("roofline_bf16_tflops"):
                    r["batched_share_of_roofline"] = r["batched_tflops"] / res["roofline_bf16_tflops"]
                res["compress"] = r
            elif section == "prefix":
                a = prefix_args(args)
                res["_prefix_args"] = a
                res["prefix"] = bp.bench(a, tokenizer)
            elif section == "decode":
                res["decode"] = bd.bench_decode(args, tokenizer)
            elif section in OWN_DEFAULTS:
                mod = OWN_DEFAULTS[section]
                a = hb.parse_single(mod, ["--shape", args.shape, "--device", args.device, "--dtype", args.dtype,
                                          "--seed", str(args.seed), "--tokenizer", args.tokenizer])
                res[section] = mod.run(a, tokenizer)
                res[f"_{section}_md"] = mod.markdown(res[section], a)
            elif section == "train":
                r = bt.bench_train(args, tokenizer)
                for run in (r["shared"], r["two_copies"]):
                    run["model_tflops"] = run["model_flop"] / run["step_ms"] / 1e9
                    if res.get("roofline_bf16_tflops"):
                        run["mfu"] = run["model_tflops"] / res["roofline_bf16_tflops"]
                res["train"] = r
        except Exception:  # keep going: the other sections' numbers are still worth having
            res["errors"][section] = traceback.format_exc()
            print(f"section {section} FAILED:\n{res['errors'][section]}", file=sys.stderr, flush=True)
        hb.release(args.device)
        print(f"== {section}: {time.perf_counter() - t:.1f} s", flush=True)
        save()
    text = markdown(res)
    print(text)
    if args.append_md:
        hb.append_md(args.append_md, env, text, f"benchmarks/run.py, {args.shape} {args.dtype}")
    checks = [res.get("compress", {}).get("slots_match", True),
              all(p["same_answers"] for p in res.get("prefix", [])),
              not args.dtype == "fp32" or all(m["same_tokens_as_first_mode"] for m in res.get("decode", {}).get("modes", {}).values())]
    return 0 if not res["errors"] and all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
