"""``/v1/memories``: compress text(s) into a stored memory, list, read, delete, and append (hierarchical)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..openapi import error_responses
from ..schemas import AppendRequest, CompressRequest
from ..service import QUEUED, MemoryId, Service
from ..store import check_id

STORED = {200: {"description": "Already stored (the same text on the same model): not compressed again."}}


def register(app: FastAPI, svc: Service) -> None:
    secured, auth401 = svc.secured, svc.auth401

    @app.post("/v1/memories", tags=["memories"], dependencies=secured, status_code=201,
              responses={**STORED, **error_responses(400, *auth401, 409, *QUEUED)})
    async def compress(req: CompressRequest) -> JSONResponse:
        """Compress text(s) into a stored memory; the id is derived from the texts and the model, so the
        same text on the same model is compressed once (then 200 instead of 201)."""
        return await svc.store_memory("compress", req.all_texts, req.max_slots)

    @app.get("/v1/memories", tags=["memories"], dependencies=secured, responses=error_responses(*auth401))
    async def list_memories() -> dict[str, Any]:
        return {"data": await run_in_threadpool(svc.store.ids)}

    @app.get("/v1/memories/{memory_id}", tags=["memories"], dependencies=secured,
             responses=error_responses(400, *auth401, 404, 409, 422))
    async def get_memory(memory_id: str = MemoryId) -> dict[str, Any]:
        check_id(memory_id)
        return await run_in_threadpool(svc.info, memory_id)

    @app.delete("/v1/memories/{memory_id}", tags=["memories"], dependencies=secured,
                responses=error_responses(400, *auth401, 404, 422))
    async def delete_memory(memory_id: str = MemoryId) -> dict[str, Any]:
        await run_in_threadpool(svc.store.delete, check_id(memory_id))
        svc.engine.hot.drop(memory_id)
        return {"id": memory_id, "deleted": True}

    async def append(req: AppendRequest, memory_id: str = MemoryId) -> JSONResponse:
        """Extend a hierarchical memory with more text (only the new text is compressed). Memories are
        immutable: the result is a new memory (its ``parent`` is this one)."""
        check_id(memory_id)
        await run_in_threadpool(svc.engine.hot.get, memory_id)  # 404 / 409 first
        return await svc.store_memory("append", req.all_texts, req.max_slots, parent=memory_id)

    if svc.hierarchical:  # only a hierarchical checkpoint appends: elsewhere the route does not exist
        app.post("/v1/memories/{memory_id}/append", tags=["memories"], dependencies=secured, status_code=201,
                 responses={**STORED, **error_responses(400, *auth401, 404, 409, *QUEUED)})(append)
