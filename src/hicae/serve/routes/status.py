"""``/health`` and ``/metrics``: is the server up, and what has it done."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI

from ..openapi import error_responses
from ..service import Service


def register(app: FastAPI, svc: Service) -> None:
    engine, cfg = svc.engine, svc.cfg

    @app.get("/health", tags=["service"], responses=error_responses())
    async def health() -> dict[str, Any]:
        return {"status": "ok", "base_model": svc.model.base_model_name, "hierarchical": engine.hierarchical}

    @app.get("/metrics", tags=["service"], dependencies=svc.secured, responses=error_responses(*svc.auth401))
    async def metrics() -> dict[str, Any]:
        s = engine.stats.snapshot()
        get = lambda k: s.get(k, 0)  # noqa: E731
        return {
            "uptime_s": round(time.time() - engine.stats.started, 1),
            "requests": {"total": get("requests"), **{f"{c}xx": get(f"responses_{c}xx") for c in (2, 4, 5)},
                         "rejected_429": get("responses_429"), "streamed": get("streamed_requests")},
            "queue": {"depth": engine.depth, "max_depth_seen": get("queue_depth_max"), "limit": cfg.max_queue},
            "tokens": {"generated": get("generated_tokens"), "compressed": get("compressed_tokens")},
            "decoding": {"decoder_calls": get("decoder_calls"), "rows": get("decoded_rows"),
                         "batched_requests": get("batched_requests"), "max_requests_per_call": get("batch_requests_max"),
                         "max_memories_per_call": get("batch_memories_max"), "steps": get("decode_steps"),
                         "seconds": round(get("decode_ms") / 1000, 3)},
            "prefix_cache": {"hits": get("prefix_cache_hits"), "misses": get("prefix_cache_misses"),
                             "bytes": engine.hot.nbytes, "budget_bytes": cfg.prefix_cache_bytes,
                             "memories": len(engine.hot), "evictions": engine.hot.evictions},
            "compressions": get("compressions"),
        }
