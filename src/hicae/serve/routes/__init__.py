"""The HTTP routes of ``hicae serve``, one module per group of endpoints, each a ``register(app, service)``.

A new endpoint: a route in the module of its group (or a new module, listed in ``GROUPS``), its request body
in ``schemas.py``, its documented statuses in ``openapi.py``; model work goes through ``Service`` (service.py).
The order of ``GROUPS`` is the order of the OpenAPI document.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI

from ..service import Service
from . import decoding, memories, openai_chat, status

GROUPS: tuple[Callable[[FastAPI, Service], None], ...] = (
    status.register,
    memories.register,
    decoding.register,
    openai_chat.register,
)


def register_all(app: FastAPI, svc: Service) -> None:
    for register in GROUPS:
        register(app, svc)
