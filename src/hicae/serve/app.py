"""The HTTP API of ``hicae serve`` (FastAPI; the OpenAPI page is /docs): the app, its error handlers, its
routes (routes/, over the engine facade of service.py) and its OpenAPI document.

Handlers validate and check limits, then hand every model call to the worker (engine.py) and
await it; they never run the model themselves. Every expected failure is a JSON error in OpenAI's
shape (errors.py), one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import HicaeError
from .engine import Engine
from .errors import BodyLimit, TooLarge, classify, error_response, validation_message
from .openapi import document
from .routes import register_all
from .service import Service
from .settings import ServeConfig

log = logging.getLogger("hicae.serve")


def create_app(engine: Engine, cfg: ServeConfig) -> FastAPI:
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

    register_all(app, Service(engine, cfg))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI's document, with the rules the server checks itself (openapi.py)
            app.openapi_schema = document(get_openapi(title=app.title, version=app.version, description=app.description,
                                                      routes=app.routes), cfg, engine.model.icae_config.mem_size,
                                          engine.hierarchical)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
