"""``hicae serve``: load a checkpoint once and serve memories over HTTP (see hicae.serve)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from ..devices import pick_device
from ..errors import ConfigError
from .flags import Flags
from .infer import LengthSettings, LoadSettings, _load


@dataclass
class ServeCommand:
    store: str = field(metadata={"help": "folder of the memory files (created if missing; kept across restarts)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (default: loopback only)"})
    port: int = field(default=8000, metadata={"help": "port to listen on (0..65535)"})
    log_level: str = field(default="info", metadata={"choices": ["critical", "error", "warning", "info", "debug"],
                                                     "help": "uvicorn's log level"})


def build_parser() -> Flags:
    from ..serve.settings import ServeConfig

    return Flags("serve", (LoadSettings, ServeCommand, LengthSettings, ServeConfig),
                 "Serve compressed contexts over HTTP (OpenAPI page: /docs).")


def serve(argv: list[str]) -> int:
    parser = build_parser()
    ns = parser.namespace(argv)
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("hicae serve needs FastAPI and uvicorn: pip install 'hicae[serve]'")
    import uvicorn

    from ..serve.app import create_app
    from ..serve.engine import Engine
    from ..serve.store import MemoryStore

    if ns.api_key is None:
        ns.api_key = os.environ.get("HICAE_API_KEY") or None
    load, args, length, cfg = parser.settings(ns)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    pick_device(load.device)
    store = MemoryStore(args.store)
    model = _load(load, length.overrides())
    app = create_app(Engine(model, store, cfg), cfg)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
