"""``/v1/chat/completions``: OpenAI's chat completions, one user message answered from a ``memory_id``."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from ...errors import DataError
from ..openapi import error_responses
from ..schemas import ChatRequest
from ..service import QUEUED, Service
from .decoding import DECODED


def register(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/chat/completions", tags=["openai"], dependencies=svc.secured,
              responses={**DECODED, **error_responses(400, *svc.auth401, 404, 409, *QUEUED)})
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
        job, streamer = await svc.decode_job(req.memory_id, "answer", [prompt], req.options(), req.stream,
                                             one_row="chat completions answer about a memory of one text")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": req.model or svc.model.base_model_name}
        if streamer is None:
            out = (await svc.engine.wait(job))["outputs"][0]
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                                 "finish_reason": out["finish_reason"]}],
                    "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["tokens"],
                              "total_tokens": out["prompt_tokens"] + out["tokens"]}}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events = svc.stream_events(job, streamer, lambda t: chunk({"role": "assistant", "content": t}, None),
                                   lambda out: chunk({}, out["finish_reason"]), "[DONE]")
        return StreamingResponse(events, media_type="text/event-stream")
