"""How ``hicae serve`` answers failures: an HTTP status and one JSON line in OpenAI's error shape.

``{"error": {"message", "type", "code"}}``: 400 bad input, 401 auth, 404 unknown id or route, 405 a
method the route does not take (``Allow`` lists those it does), 409 a memory file that is damaged or made
by another model, or a request that does not fit the memory it names, 413 a limit, 422 a body that does not
validate, 429 a full queue, 504 a timeout; a bug is a 500 "internal error" whose traceback stays in
the server log. Also the body-size limit, which must answer in the same shape.
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..failures import describe
from ..errors import CheckpointError, HicaeError, OutputError
from .engine import QueueFull, Timeout
from .store import NotFound


class TooLarge(HicaeError):
    """A request over one of the server's limits (413)."""


class Unauthorized(HicaeError):
    """A missing or wrong bearer token (401)."""


class Conflict(HicaeError):
    """A valid request that does not fit the memory it names (409): e.g. several prompts for a memory of
    another number of texts, or one streamed row asked of a memory of several texts."""


_STATUS = [(NotFound, 404, "not_found"), (QueueFull, 429, "queue_full"), (Timeout, 504, "timeout"),
           (TooLarge, 413, "too_large"), (Unauthorized, 401, "unauthorized"), (Conflict, 409, "conflict"), (OutputError, 500, "server_error"),
           (CheckpointError, 409, "unusable_memory"), (HicaeError, 400, "invalid_request")]


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def classify(e: BaseException) -> tuple[int, str, str]:
    """Status, type and one-line message of a failure (500 'internal error' for a bug)."""
    for cls, status, kind in _STATUS:
        if isinstance(e, cls):
            return status, kind, str(e)
    message = describe(e)  # the mapping the CLI shares: OS errors, generation settings transformers refuses
    if message is None:
        return 500, "internal_error", "internal error (the server log has the details)"
    return (400, "invalid_request", message) if isinstance(e, ValueError) else (500, "server_error", message)


def validation_message(e: RequestValidationError) -> tuple[int, str]:
    errs = e.errors()
    if any(err.get("type") == "json_invalid" for err in errs):
        ctx = next(err.get("ctx", {}) for err in errs if err.get("type") == "json_invalid")
        return 400, f"malformed JSON body: {ctx.get('error', 'cannot parse it')}"
    parts = []
    for err in errs[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return 422, "; ".join(parts) + (f" (and {len(errs) - 3} more)" if len(errs) > 3 else "")


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with a JSON 413: at once by its Content-Length, or
    while it is read (a chunked body). Starlette's own limit answers in plain text."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    def _error(self) -> TooLarge:
        return TooLarge(f"request body over --max_body_bytes {self.limit}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            response = error_response(413, "too_large", str(self._error()))
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if seen > self.limit:
                raise self._error()
            return message

        await self.app(scope, limited, send)
