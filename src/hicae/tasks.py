"""The one vocabulary of decoding tasks: what the decoder is asked to do with a memory.

Inside the model a task is a short name (``ae``, ``lm``, ``ft``) with a trained task embedding;
users (the CLI, the server, the hand-off) name it by what it does (``reconstruct``, ``continue``,
``answer``). Everything that needs either spelling, or the task's row, reads it here.

The placeholder ids come from ``layout.py`` (the decoder's id lists); ``model.TASKS`` is this
``TASKS`` and the training collator's ``task`` column is this ``TASK_INDEX`` (tests/test_tasks.py).
"""

from __future__ import annotations

from typing import Literal, get_args

from .errors import DataError
from .layout import TASK_IDS

# Model tasks, in the order of the rows of ``ICAE.task_embeddings`` (a checkpoint's layout: never reorder).
AE, LM, FT = "ae", "lm", "ft"
TASKS: tuple[str, ...] = (AE, LM, FT)
TASK_INDEX = {name: i for i, name in enumerate(TASKS)}  # a training batch's ``task`` column
PLACEHOLDER = {name: TASK_IDS[name] for name in TASKS}  # the decoder's id for the task embedding

# User-facing names (CLI, HTTP, hand-off) -> model task. ``answer`` takes prompts; the others take none.
UserTask = Literal["answer", "reconstruct", "continue"]
USER_TASKS: dict[str, str] = dict(zip(get_args(UserTask), (FT, AE, LM)))
PROMPTED = "answer"


def model_task(name: str) -> str:
    """The model task of a user-facing task name; an unknown name is one clear ``DataError``."""
    if name not in USER_TASKS:
        raise DataError(f"unknown task {name!r} (choose from {', '.join(USER_TASKS)})")
    return USER_TASKS[name]
