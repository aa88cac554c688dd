"""The HTTP API of ``hicae serve`` (FastAPI; the OpenAPI page is /docs).

Handlers validate and check limits, then hand every model call to the worker (engine.py) and
await it; they never run the model themselves. Every expected failure is a JSON error in OpenAI's
shape (errors.py), one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from transformers import AsyncTextIteratorStreamer

from ..errors import DataError, HicaeError
from .engine import Engine, Job
from .errors import BodyLimit, Conflict, TooLarge, Unauthorized, classify, error_response, validation_message
from .openapi import ID_PATTERN, SSE_EVENT, document, error_responses
from .schemas import AppendRequest, ChatRequest, CompressRequest, GenerateRequest
from .settings import ServeConfig
from .store import check_id

log = logging.getLogger("hicae.serve")


def _sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, cfg: ServeConfig) -> FastAPI:
    model, store = engine.model, engine.store

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="hicae serve", version="1", lifespan=lifespan,
                  description="Compressed contexts (ICAE memories): compress once, ask many times.")
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    bearer = HTTPBearer(auto_error=False)

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cfg.api_key is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), cfg.api_key.encode()):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    # ---- errors and request counting -------------------------------------------------------------

    # HicaeError is an expected failure (handled, not logged); Exception: a bug or an environment
    # failure, answered the same way, and Starlette logs its traceback on the server side only.
    @app.exception_handler(HicaeError)
    @app.exception_handler(Exception)
    async def on_error(request: Request, e: Exception) -> JSONResponse:
        status, kind, message = classify(e)
        if status == 500 and kind == "internal_error":
            log.error("hicae serve: %s %s failed", request.method, request.url.path, exc_info=e)
        headers = {"Retry-After": "1"} if status == 429 else {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, kind, message, headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        status, message = validation_message(e)
        return error_response(status, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if isinstance(e.__cause__, TooLarge):  # a chunked body over the limit, seen while FastAPI parsed it
            return error_response(413, "too_large", str(e.__cause__))
        message, headers = str(e.detail), getattr(e, "headers", None)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif e.status_code == 405:  # Allow: every method of the path, not only those of the route that matched first
            allowed = sorted({m for r in app.routes if r.matches(request.scope)[0] != Match.NONE
                              for m in getattr(r, "methods", None) or ()})
            headers = {"Allow": ", ".join(allowed)}
            message = f"{request.method} is not allowed on {request.url.path}: use {', '.join(allowed)}"
        return error_response(e.status_code, "http_error", message, headers)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        engine.stats.add("requests")
        engine.stats.add(f"responses_{response.status_code // 100}xx")
        if response.status_code == 429:
            engine.stats.add("responses_429")
        return response

    # ---- helpers ----------------------------------------------------------------------------------

    def check_texts(texts: list[str]) -> None:
        if len(texts) > cfg.max_texts:
            raise TooLarge(f"{len(texts)} texts in one request, over --max_texts {cfg.max_texts}")
        for i, t in enumerate(texts):
            if len(t) > cfg.max_text_chars:
                raise TooLarge(f"text {i} has {len(t)} characters, over --max_text_chars {cfg.max_text_chars}")
            if not t.strip():
                raise DataError(f"text {i} is empty: there is nothing to compress")

    def check_decoding(prompts: list[str] | None, max_new_tokens: int | None) -> None:
        prompts = prompts or []
        if len(prompts) > cfg.max_prompts:
            raise TooLarge(f"{len(prompts)} prompts in one request, over --max_prompts {cfg.max_prompts}")
        for i, p in enumerate(prompts):
            if len(p) > cfg.max_prompt_chars:
                raise TooLarge(f"prompt {i} has {len(p)} characters, over --max_prompt_chars {cfg.max_prompt_chars}")
        if max_new_tokens is not None and max_new_tokens > cfg.max_new_tokens:
            raise TooLarge(f"max_new_tokens {max_new_tokens} is over the server's --max_new_tokens {cfg.max_new_tokens}")

    def info(memory_id: str) -> dict[str, Any]:
        mem = engine.hot.get(memory_id).mem  # loads and checks it against the model
        path = store.path(memory_id)
        created = mem.extra.get("created")
        if created is None:
            with contextlib.suppress(OSError):
                created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(path.stat().st_mtime))
        return {"id": memory_id, "texts": len(mem), "tokens": mem.num_tokens, "slots": mem.num_slots,
                "levels": mem.levels, "hierarchical": mem.hierarchical, "base_model": mem.base_model,
                "created": created, "parent": mem.extra.get("parent")}

    async def store_memory(op: str, texts: list[str], max_slots: int | None, parent: str | None = None) -> JSONResponse:
        check_texts(texts)
        if max_slots is not None and not engine.hierarchical:
            raise DataError("max_slots needs a hierarchical checkpoint (hicae pretrain --hierarchical)")
        what: dict[str, Any] = {"texts": texts, "max_slots": max_slots}
        if parent:
            what["parent"] = parent
        mid = engine.memory_id_of(op, **what)
        created = False
        if not store.exists(mid):
            job = engine.submit(engine.job(op, {"id": mid, "texts": texts, "max_slots": max_slots, "parent": parent}))
            created = (await engine.wait(job))["created"]
        body = await run_in_threadpool(info, mid)
        return JSONResponse({**body, "created_now": created}, 201 if created else 200)

    async def decode_job(memory_id: str, task: str, prompts: list[str] | None, max_new_tokens: int | None,
                         sampling: dict[str, Any], stream: bool, one_row: str | None = None) -> tuple[Job, Any]:
        """Validate a decoding request against its memory and queue it; returns the job and its streamer."""
        check_id(memory_id)
        check_decoding(prompts, max_new_tokens)
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
            streamer = AsyncTextIteratorStreamer(model.tokenizer, skip_prompt=True, timeout=cfg.request_timeout,
                                                 skip_special_tokens=True)
        job = engine.decode_job(memory_id, hot.mem, task, prompts, max_new_tokens, sampling, streamer)
        return engine.submit(job), streamer

    async def stream_events(job: Job, streamer: Any, piece: Any, done: Any, end: str | None) -> AsyncIterator[str]:
        """SSE: ``piece(text)`` per piece of text, ``done(result)`` once decoding ended, then ``end``."""
        try:
            async for text in streamer:
                if text:
                    yield _sse(piece(text))
            result = await engine.wait(job)
            engine.stats.add("streamed_requests")
            yield _sse(done(result["outputs"][0]))
            if end:
                yield _sse(end)
        except (Exception, TimeoutError) as e:  # the status line is sent: report in the stream
            status, kind, message = classify(e)
            yield _sse({"error": {"message": message, "type": kind, "code": status}})
        finally:
            if not job.future.done():
                job.cancelled = True  # the client went away: stop decoding

    # ---- routes -----------------------------------------------------------------------------------

    @app.get("/health", tags=["service"], responses=error_responses())
    async def health() -> dict[str, Any]:
        return {"status": "ok", "base_model": model.base_model_name, "hierarchical": engine.hierarchical}

    # auth (and its 401) only where a key is set: the document says what the server does
    secured = [Depends(auth)] if cfg.api_key is not None else []
    auth401 = (401,) if cfg.api_key is not None else ()
    MemoryId = Path(description="A memory's id: 32 lowercase hex digits.", json_schema_extra={"pattern": ID_PATTERN})
    queued = (413, 422, 429, 504)  # what every route that queues model work can answer besides its own

    @app.get("/metrics", tags=["service"], dependencies=secured, responses=error_responses(*auth401))
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

    stored = {200: {"description": "Already stored (the same text on the same model): not compressed again."}}

    @app.post("/v1/memories", tags=["memories"], dependencies=secured, status_code=201,
              responses={**stored, **error_responses(400, *auth401, 409, *queued)})
    async def compress(req: CompressRequest) -> JSONResponse:
        """Compress text(s) into a stored memory; the id is derived from the texts and the model, so the
        same text on the same model is compressed once (then 200 instead of 201)."""
        return await store_memory("compress", req.all_texts, req.max_slots)

    @app.get("/v1/memories", tags=["memories"], dependencies=secured, responses=error_responses(*auth401))
    async def list_memories() -> dict[str, Any]:
        return {"data": await run_in_threadpool(store.ids)}

    @app.get("/v1/memories/{memory_id}", tags=["memories"], dependencies=secured,
             responses=error_responses(400, *auth401, 404, 409, 422))
    async def get_memory(memory_id: str = MemoryId) -> dict[str, Any]:
        check_id(memory_id)
        return await run_in_threadpool(info, memory_id)

    @app.delete("/v1/memories/{memory_id}", tags=["memories"], dependencies=secured,
                responses=error_responses(400, *auth401, 404, 422))
    async def delete_memory(memory_id: str = MemoryId) -> dict[str, Any]:
        await run_in_threadpool(store.delete, check_id(memory_id))
        engine.hot.drop(memory_id)
        return {"id": memory_id, "deleted": True}

    async def append(req: AppendRequest, memory_id: str = MemoryId) -> JSONResponse:
        """Extend a hierarchical memory with more text (only the new text is compressed). Memories are
        immutable: the result is a new memory (its ``parent`` is this one)."""
        check_id(memory_id)
        await run_in_threadpool(engine.hot.get, memory_id)  # 404 / 409 first
        return await store_memory("append", req.all_texts, req.max_slots, parent=memory_id)

    if engine.hierarchical:  # only a hierarchical checkpoint appends: elsewhere the route does not exist
        app.post("/v1/memories/{memory_id}/append", tags=["memories"], dependencies=secured, status_code=201,
                 responses={**stored, **error_responses(400, *auth401, 404, 409, *queued)})(append)

    decoded = {200: {"description": "The outputs (JSON), or with stream: true server-sent events.",
                     "content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}}}}

    @app.post("/v1/memories/{memory_id}/generate", tags=["decoding"], dependencies=secured,
              responses={**decoded, **error_responses(400, *auth401, 404, 409, *queued)})
    async def generate(req: GenerateRequest, memory_id: str = MemoryId) -> Any:
        """Answer prompts about a memory, reconstruct it or continue it; ``stream: true`` for SSE."""
        job, streamer = await decode_job(memory_id, req.task, req.all_prompts, req.max_new_tokens, req.sampling(),
                                         req.stream)
        if streamer is None:
            return await engine.wait(job)
        events = stream_events(job, streamer, lambda t: {"text": t}, lambda out: {"done": True, **out}, None)
        return StreamingResponse(events, media_type="text/event-stream")

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=secured,
              responses={**decoded, **error_responses(400, *auth401, 404, 409, *queued)})
    async def chat(req: ChatRequest) -> Any:
        """OpenAI's chat completions with a ``memory_id`` extension: one user message, answered from the memory."""
        if len(req.messages) != 1 or req.messages[0].role != "user":
            roles = [m.role for m in req.messages]
            raise DataError("hicae answers one user message about a memory: send messages=[{'role': 'user', "
                            f"'content': ...}}] (got roles {roles})")
        try:
            prompt = req.messages[0].text()
        except ValueError as e:
            raise DataError(str(e)) from None
        sampling: dict[str, Any] = {}
        if req.temperature:  # absent or 0: greedy
            sampling = {"do_sample": True, "temperature": req.temperature,
                        **{k: v for k, v in {"top_p": req.top_p, "seed": req.seed}.items() if v is not None}}
        job, streamer = await decode_job(req.memory_id, "answer", [prompt], req.max_completion_tokens or req.max_tokens,
                                         sampling, req.stream, one_row="chat completions answer about a memory of "
                                                                       "one text")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": req.model or model.base_model_name}
        if streamer is None:
            out = (await engine.wait(job))["outputs"][0]
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                                 "finish_reason": out["finish_reason"]}],
                    "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["tokens"],
                              "total_tokens": out["prompt_tokens"] + out["tokens"]}}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events = stream_events(job, streamer, lambda t: chunk({"role": "assistant", "content": t}, None),
                               lambda out: chunk({}, out["finish_reason"]), "[DONE]")
        return StreamingResponse(events, media_type="text/event-stream")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI's document, with the rules the server checks itself (openapi.py)
            app.openapi_schema = document(get_openapi(title=app.title, version=app.version, description=app.description,
                                                      routes=app.routes), cfg, model.icae_config.mem_size,
                                          engine.hierarchical)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
