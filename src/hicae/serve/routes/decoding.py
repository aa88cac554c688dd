"""``/v1/memories/{id}/generate``: answer prompts about a memory, reconstruct it or continue it (JSON or SSE)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from ..openapi import SSE_EVENT, error_responses
from ..schemas import GenerateRequest
from ..service import QUEUED, MemoryId, Service

DECODED = {200: {"description": "The outputs (JSON), or with stream: true server-sent events.",
                 "content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}}}}


def register(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/memories/{memory_id}/generate", tags=["decoding"], dependencies=svc.secured,
              responses={**DECODED, **error_responses(400, *svc.auth401, 404, 409, *QUEUED)})
    async def generate(req: GenerateRequest, memory_id: str = MemoryId) -> Any:
        """Answer prompts about a memory, reconstruct it or continue it; ``stream: true`` for SSE."""
        job, streamer = await svc.decode_job(memory_id, req.task, req.all_prompts, req.options(), req.stream)
        if streamer is None:
            return await svc.engine.wait(job)
        events = svc.stream_events(job, streamer, lambda t: {"text": t}, lambda out: {"done": True, **out}, None)
        return StreamingResponse(events, media_type="text/event-stream")
