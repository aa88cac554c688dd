"""The tasks of ``hicae eval``, by name. A new task: one module defining an ``EvalTask``, one line here
(tests/evaluation/test_registry.py then runs it with every other task, and asks for its smoke arguments)."""

from __future__ import annotations

from . import ae, ppl, qa, retrieval
from .eval_task import EvalTask

REGISTRY: dict[str, EvalTask] = {t.name: t for t in (
    ae.TASK,
    ppl.TASK,
    qa.TASK,
    retrieval.PASSKEY,
    retrieval.NEEDLE,
)}
TASKS = tuple(REGISTRY)
