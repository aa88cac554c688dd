"""``hicae serve``: load a checkpoint once and serve memories over HTTP (see hicae.serve)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os

from ..errors import ConfigError
from ..devices import pick_device
from .infer import _load, _model_args, length_args, length_overrides


def _settings_args(p: argparse.ArgumentParser) -> None:
    from ..serve.settings import ServeConfig

    for f in dataclasses.fields(ServeConfig):
        names = [f"--{f.name}"] + (["--api-key"] if f.name == "api_key" else [])
        kind = str if f.name == "api_key" else type(f.default)
        p.add_argument(*names, dest=f.name, type=kind, default=f.default, help=f.metadata["help"])


def serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hicae serve", description="Serve compressed contexts over HTTP (OpenAPI page: /docs).")
    _model_args(p)
    p.add_argument("--store", required=True, help="folder of the memory files (created if missing; kept across restarts)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    length_args(p)
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _settings_args(p)
    args = p.parse_args(argv)
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("hicae serve needs FastAPI and uvicorn: pip install 'hicae[serve]'")
    import uvicorn

    from ..serve.app import create_app
    from ..serve.engine import Engine
    from ..serve.settings import ServeConfig
    from ..serve.store import MemoryStore

    names = {f.name for f in dataclasses.fields(ServeConfig)}
    settings = {k: v for k, v in vars(args).items() if k in names}
    if settings["api_key"] is None:
        settings["api_key"] = os.environ.get("HICAE_API_KEY") or None
    cfg = ServeConfig(**settings)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    pick_device(args.device)
    store = MemoryStore(args.store)
    model = _load(args, length_overrides(args))
    app = create_app(Engine(model, store, cfg), cfg)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
