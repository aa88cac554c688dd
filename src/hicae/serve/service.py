"""The engine facade the routes (routes/) work through: the server's limits, the memory store and the model
worker behind a few calls, so that a route validates, calls one of these and shapes its answer.

Every model call goes through the worker (engine.py) and is awaited; no route runs the model itself.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from typing import Any, AsyncIterator, Callable

from fastapi import Depends, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from transformers import AsyncTextIteratorStreamer

from ..errors import DataError
from ..sampling import SamplingOptions
from .engine import CompressArgs, Engine, Job
from .errors import Conflict, TooLarge, Unauthorized, classify
from .openapi import ID_PATTERN
from .settings import ServeConfig
from .store import check_id

MemoryId = Path(description="A memory's id: 32 lowercase hex digits.", json_schema_extra={"pattern": ID_PATTERN})
QUEUED = (413, 422, 429, 504)  # what every route that queues model work can answer besides its own
_bearer = HTTPBearer(auto_error=False)


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Service:
    def __init__(self, engine: Engine, cfg: ServeConfig):
        self.engine, self.cfg = engine, cfg
        self.model, self.store, self.hierarchical = engine.model, engine.store, engine.hierarchical
        # auth (and its 401) only where a key is set: the document says what the server does
        self.secured = [Depends(self.auth)] if cfg.api_key is not None else []
        self.auth401 = (401,) if cfg.api_key is not None else ()

    async def auth(self, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if self.cfg.api_key is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), self.cfg.api_key.encode()):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    # ---- limits -------------------------------------------------------------------------------------------

    def check_texts(self, texts: list[str]) -> None:
        cfg = self.cfg
        if len(texts) > cfg.max_texts:
            raise TooLarge(f"{len(texts)} texts in one request, over --max_texts {cfg.max_texts}")
        for i, t in enumerate(texts):
            if len(t) > cfg.max_text_chars:
                raise TooLarge(f"text {i} has {len(t)} characters, over --max_text_chars {cfg.max_text_chars}")
            if not t.strip():
                raise DataError(f"text {i} is empty: there is nothing to compress")

    def check_decoding(self, prompts: list[str] | None, max_new_tokens: int | None) -> None:
        cfg, prompts = self.cfg, prompts or []
        if len(prompts) > cfg.max_prompts:
            raise TooLarge(f"{len(prompts)} prompts in one request, over --max_prompts {cfg.max_prompts}")
        for i, p in enumerate(prompts):
            if len(p) > cfg.max_prompt_chars:
                raise TooLarge(f"prompt {i} has {len(p)} characters, over --max_prompt_chars {cfg.max_prompt_chars}")
        if max_new_tokens is not None and max_new_tokens > cfg.max_new_tokens:
            raise TooLarge(f"max_new_tokens {max_new_tokens} is over the server's --max_new_tokens {cfg.max_new_tokens}")

    # ---- memories -----------------------------------------------------------------------------------------

    def info(self, memory_id: str) -> dict[str, Any]:
        mem = self.engine.hot.get(memory_id).mem  # loads and checks it against the model
        path = self.store.path(memory_id)
        created = mem.extra.get("created")
        if created is None:
            with contextlib.suppress(OSError):
                created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(path.stat().st_mtime))
        return {"id": memory_id, "texts": len(mem), "tokens": mem.num_tokens, "slots": mem.num_slots,
                "levels": mem.levels, "hierarchical": mem.hierarchical, "base_model": mem.base_model,
                "created": created, "parent": mem.extra.get("parent")}

    async def store_memory(self, op: str, texts: list[str], max_slots: int | None, parent: str | None = None) -> JSONResponse:
        engine = self.engine
        self.check_texts(texts)
        if max_slots is not None and not engine.hierarchical:
            raise DataError("max_slots needs a hierarchical checkpoint (hicae pretrain --hierarchical)")
        what: dict[str, Any] = {"texts": texts, "max_slots": max_slots}
        if parent:
            what["parent"] = parent
        mid = engine.memory_id_of(op, **what)
        created = False
        if not self.store.exists(mid):
            job = engine.submit(engine.job(op, CompressArgs(id=mid, texts=texts, max_slots=max_slots, parent=parent)))
            created = (await engine.wait(job))["created"]
        body = await run_in_threadpool(self.info, mid)
        return JSONResponse({**body, "created_now": created}, 201 if created else 200)

    # ---- decoding -----------------------------------------------------------------------------------------

    async def decode_job(self, memory_id: str, task: str, prompts: list[str] | None, options: SamplingOptions,
                         stream: bool, one_row: str | None = None) -> tuple[Job, Any]:
        """Validate a decoding request against its memory and queue it; returns the job and its streamer."""
        engine = self.engine
        check_id(memory_id)
        self.check_decoding(prompts, options.max_new_tokens)
        hot = await run_in_threadpool(engine.hot.get, memory_id)  # 404 / 409 before anything is queued
        n = len(hot.mem)
        if task == "answer" and prompts and 1 < len(prompts) != n > 1:  # depends on the memory: 409, not 400
            raise Conflict(f"{len(prompts)} prompts for a memory of {n} texts: give one prompt per text, or one prompt")
        rows = len(engine.rows_of(hot.mem, task, prompts)[0])
        if rows != 1 and (stream or one_row):
            if len(prompts or []) > 1:  # the request itself asks for several rows
                raise DataError(f"stream: true decodes one row, but this request has {len(prompts or [])} prompts")
            raise Conflict(f"{one_row or 'stream: true decodes one row'}, but memory {memory_id} holds {n} texts")
        streamer = None
        if stream:
            streamer = AsyncTextIteratorStreamer(self.model.tokenizer, skip_prompt=True,
                                                 timeout=self.cfg.request_timeout, skip_special_tokens=True)
        job = engine.decode_job(memory_id, hot.mem, task, prompts, options, streamer)
        return engine.submit(job), streamer

    async def stream_events(self, job: Job, streamer: Any, piece: Callable[[str], Any], done: Callable[[Any], Any],
                            end: str | None) -> AsyncIterator[str]:
        """SSE: ``piece(text)`` per piece of text, ``done(result)`` once decoding ended, then ``end``."""
        try:
            async for text in streamer:
                if text:
                    yield sse(piece(text))
            result = await self.engine.wait(job)
            self.engine.stats.add("streamed_requests")
            yield sse(done(result["outputs"][0]))
            if end:
                yield sse(end)
        except (Exception, TimeoutError) as e:  # the status line is sent: report in the stream
            status, kind, message = classify(e)
            yield sse({"error": {"message": message, "type": kind, "code": status}})
        finally:
            if not job.future.done():
                job.cancelled = True  # the client went away: stop decoding
