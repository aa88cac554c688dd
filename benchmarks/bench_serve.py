#!/usr/bin/env python
"""Load benchmark of ``hicae serve``: concurrent clients vs the same questions one at a time, uncached.

One run, loopback only, bounded in count and time. A few memories are compressed once; then the
same questions about them are sent twice, each time to a freshly started server on the same store:

* ``one at a time, no prefix cache``: ``--prefix_cache_bytes 0 --batch_window_ms 0``, one client,
  each question after the previous answer (every request recomputes its memory's prefix);
* ``N concurrent clients``: the defaults (prefix cache, micro-batcher); N client threads share the
  question list, each sending its next question when its previous one is answered.

Every request is answered (200) or refused (429); the report counts both and fails (exit 1) if any
request got anything else. Per phase: requests/s, p50/p99 latency, generated tokens/s, and how
many greedy answers equal the other phase's.

    .venv/bin/python benchmarks/bench_serve.py                  # the real Qwen2.5-0.5B + demo adapter, CPU
    .venv/bin/python benchmarks/bench_serve.py --tiny            # a tiny random model (seconds)
    .venv/bin/python benchmarks/bench_serve.py --md docs/serve.md   # also write the markdown report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
try:  # run from a checkout without installing
    import hicae  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's server launcher and tiny checkpoint
from serve.conftest import Server, save_tiny_checkpoint  # noqa: E402

PASSAGES = [
    "The river Elbe rises in the Krkonose mountains and flows north-west through Bohemia and Germany "
    "to the North Sea at Cuxhaven, passing Dresden, Magdeburg and Hamburg on the way.",
    "Marie Curie was the first woman to win a Nobel Prize and the only person to win Nobel Prizes in two "
    "different sciences, physics in 1903 and chemistry in 1911.",
    "A hash table stores key-value pairs in an array of buckets; a hash function maps each key to a bucket, "
    "and collisions are resolved by chaining or by open addressing.",
    "The Great Barrier Reef, off the coast of Queensland, is the largest coral reef system in the world and "
    "can be seen from outer space.",
]
QUESTIONS = ["What is this text about?", "Name one place or person mentioned.", "Summarise it in one sentence.",
             "What is the most important fact here?", "Which numbers appear in it?", "Who would find this useful?",
             "Give a title for it.", "What comes first in the text?"]


def run_phase(url: str, jobs: list[tuple[str, str]], clients: int, max_new_tokens: int, deadline: float) -> dict:
    """Send ``jobs`` (memory id, question) from ``clients`` threads; latency per request, status counts."""
    lock = threading.Lock()
    todo = list(enumerate(jobs))
    results: dict[int, dict[str, Any]] = {}

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    if not todo or time.monotonic() > deadline:
                        return
                    i, (mid, q) = todo.pop(0)
                t = time.perf_counter()
                r = http.post(f"{url}/v1/memories/{mid}/generate", json={"prompt": q, "max_new_tokens": max_new_tokens})
                dt = time.perf_counter() - t
                out = r.json()["outputs"][0] if r.status_code == 200 else None
                results[i] = {"status": r.status_code, "latency": dt, "text": out and out["text"],
                              "tokens": out["tokens"] if out else 0}

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results.values() if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    metrics = httpx.get(url + "/metrics").json()
    return {
        "clients": clients, "sent": len(results), "answered": len(ok),
        "refused_429": sum(r["status"] == 429 for r in results.values()),
        "other": sum(r["status"] not in (200, 429) for r in results.values()),
        "wall_s": wall, "requests_per_s": len(ok) / wall, "p50_s": q[49], "p99_s": q[98],
        "tokens": sum(r["tokens"] for r in ok), "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "texts": {i: r["text"] for i, r in results.items()},
        "server": {"decoding": metrics["decoding"], "prefix_cache": metrics["prefix_cache"]},
    }


def markdown(report: dict) -> str:
    a, b = report["phases"]
    rows = [("one at a time, no prefix cache", a), (f"{b['clients']} concurrent clients, prefix cache + batching", b)]
    lines = [
        f"Setting: {report['setting']}", "",
        "| phase | answered / sent | 429 | requests/s | p50 latency | p99 latency | generated tokens/s | "
        "decoder calls | rows per call | memories per call (max) | s per decoding step | prefix-cache hits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in rows:
        s, d = p["server"], p["server"]["decoding"]
        # s per step: the worker's time in decoder calls over their steps (prefill included: an upper bound)
        lines.append(f"| {name} | {p['answered']} / {p['sent']} | {p['refused_429']} | {p['requests_per_s']:.2f} | "
                     f"{p['p50_s']:.2f} s | {p['p99_s']:.2f} s | {p['tokens_per_s']:.1f} | "
                     f"{d['decoder_calls']} | {d['rows'] / max(1, d['decoder_calls']):.1f} | "
                     f"{d['max_memories_per_call']} | {d['seconds'] / max(1, d['steps']):.3f} | "
                     f"{s['prefix_cache']['hits']} |")
    lines += ["", f"Speed-up in requests/s: {b['requests_per_s'] / a['requests_per_s']:.2f}x; greedy answers equal "
              f"between the phases: {report['equal_answers']} of {min(a['answered'], b['answered'])}.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead of the real Qwen2.5-0.5B")
    p.add_argument("--checkpoint", default=None, help="default: the demo adapter (src/hicae/demo/checkpoint)")
    p.add_argument("--model_name_or_path", default=None, help="default: the real Qwen2.5-0.5B setup.sh fetched")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--memories", type=int, default=2, help="memories asked about (<= %d)" % len(PASSAGES))
    p.add_argument("--questions", type=int, default=8, help="questions per memory (<= %d)" % len(QUESTIONS))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--time_limit", type=float, default=900, help="seconds per phase at most")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    args = p.parse_args()
    if not (1 <= args.memories <= len(PASSAGES) and 1 <= args.questions <= len(QUESTIONS)):
        p.error("--memories / --questions out of range")

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.tiny:
        checkpoint, model_args = save_tiny_checkpoint(work / "ck"), []
        setting = "tiny random Qwen2 (2 x 64), fp32"
    else:
        from hicae.demo import DEMO_CHECKPOINT
        from hicae.demo.real_model import qwen25_path

        checkpoint = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
        model_args = ["--model_name_or_path", args.model_name_or_path or str(qwen25_path(fetch=False)),
                      "--dtype", args.dtype]
        setting = f"Qwen2.5-0.5B-Instruct + the demo adapter (16 slots per 64 tokens), {args.dtype}"
    setting += (f", CPU ({os.cpu_count()} cores, {args.threads} torch threads, {platform.processor() or 'cpu'}); "
                f"{args.memories} memories x {args.questions} questions, {args.max_new_tokens} new tokens at most")
    store = work / "store"
    phases = []
    mids: list[str] = []
    for extra, clients in ((["--prefix_cache_bytes", "0", "--batch_window_ms", "0"], 1),
                           (["--max_queue", str(max(64, args.clients))], args.clients)):
        server = Server(checkpoint, store, *model_args, *extra, env={"OMP_NUM_THREADS": str(args.threads)},
                        start_timeout=900)
        try:
            if not mids:  # compressed once, before timing; the second server finds them in the store
                mids = [httpx.post(server.url + "/v1/memories", json={"text": t}, timeout=600).json()["id"]
                        for t in PASSAGES[: args.memories]]
            jobs = [(m, q) for q in QUESTIONS[: args.questions] for m in mids]
            phases.append(run_phase(server.url, jobs, clients, args.max_new_tokens,
                                    time.monotonic() + args.time_limit))
        finally:
            server.stop()
    a, b = phases
    equal = sum(a["texts"].get(i) == t for i, t in b["texts"].items() if t is not None and a["texts"].get(i) is not None)
    report = {"setting": setting, "phases": phases, "equal_answers": equal}
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.md:
        Path(args.md).write_text(table)
    lost = sum(ph["other"] for ph in phases) + sum(len(jobs) - ph["sent"] for ph in phases)
    if lost:
        print(f"bench_serve: {lost} requests neither answered nor refused with 429", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
