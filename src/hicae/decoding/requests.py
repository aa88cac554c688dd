"""The rows, prompts and layouts of one decoding request, worked out once and carried through.

A request is a task, a memory of ``n`` entries and (``answer`` only) prompts. Its *rows* are
what one ``generate`` call decodes, each reading one entry's slots:

- ``ft`` (answer): one prompt for every entry, many prompts about one entry (the rows share its
  slots), or one prompt per entry;
- ``ae`` (reconstruct), ``lm`` (continue): one row per entry, no prompts.

Each row's decoder layout (``layout.DecoderExample``: ids with SLOT and task placeholders) comes
from the tokenizer's chat format (``tokens.py``) or the layout rules (``layout.py``).
``ICAE.generate`` / ``reconstruct`` / ``continue_text``, the hand-off and the server's engine all
take their rows from here, so they agree on the broadcast rule and on the layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DataError
from ..layout import AE as AE_ID
from ..layout import SLOT, DecoderExample, lm_prefix, with_target
from ..memory import Memory
from ..tasks import AE, FT, TASKS


@dataclass
class Request:
    """One decoding request, its rows resolved: row ``i`` reads ``mem``'s entry ``i`` through ``examples[i]``."""

    task: str  # the model task: "ae" | "lm" | "ft"
    mem: Memory  # one entry per row (an entry repeats when many prompts ask about it)
    prompts: list[str] | None  # ft: one per row; ae / lm: None
    examples: list[DecoderExample]  # the decoder layout of each row, labels empty (nothing to learn)


def broadcast_rows(n: int, prompts: list[str] | str) -> tuple[list[int], list[str]]:
    """The memory entry and the prompt of each row of an ``answer`` request on ``n`` entries: one
    prompt for every entry, many prompts about one entry (rows share its slots), or one per entry."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise DataError("no prompts: give one prompt per memory, or one prompt for all")
    if len(prompts) == 1:  # one question for every memory
        return list(range(n)), list(prompts) * n
    if n == 1:  # many questions about one memory
        return [0] * len(prompts), list(prompts)
    if len(prompts) != n:
        raise DataError(f"{len(prompts)} prompts for {n} memories: give one prompt per memory, or one memory")
    return list(range(n)), list(prompts)


def request_rows(n: int, task: str, prompts: list[str] | str | None,
                 name: str | None = None) -> tuple[list[int], list[str] | None]:
    """The memory entry and the prompt of each row of a request on ``n`` entries (``task``: a model task;
    ``name``: the task as the caller spelled it, for the error of a prompt given to a task that takes none)."""
    if task != FT:
        if prompts:
            raise DataError(f"task {(name or task)!r} takes no prompts")
        return list(range(n)), None
    return broadcast_rows(n, prompts if prompts is not None else [])


def decode_request(model: Any, mem: Memory, task: str = FT, prompts: list[str] | str | None = None) -> Request:
    """The rows of ``task`` on ``mem`` and their decoder layouts (``model``: an ``ICAE``, for its chat
    format and its ``add_special_token_for_lm``)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} (choose from {list(TASKS)})")
    rows, prompts = request_rows(len(mem), task, prompts)
    if task == FT:
        if rows != list(range(len(mem))):  # prompts broadcast over the entries: rows share slots
            mem = mem[rows]
        return Request(task, mem, prompts, [model.tokens.ft_example(n, p, None) for n, p in zip(mem.num_slots, prompts)])
    if task == AE:
        return Request(task, mem, None, [with_target([SLOT] * n + [AE_ID], []) for n in mem.num_slots])
    # [LM] after the slots unless the reference's layout (add_special_token_for_lm=False) is chosen
    lm = model.icae_config.add_special_token_for_lm
    return Request(task, mem, None, [with_target(lm_prefix(n, lm), []) for n in mem.num_slots])
