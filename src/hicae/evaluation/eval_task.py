"""What an evaluation task gives ``hicae eval``: its flags, the checks and reading done before the
model loads, and the run. One ``EvalTask`` per task module; ``registry.py`` lists them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from .report import TaskResult
from .runtime import EvalSettings


@dataclass(frozen=True)
class EvalTask:
    name: str  # the value of --task and the stem of the report files
    summary: str  # one line of ``hicae eval --help``
    reads_data: bool  # True: needs --data; False: makes its own data (and --data is refused)
    # Everything that can fail without the model (flag values, the data file): bad input fails in seconds.
    # Returns what ``run`` needs besides the model and the settings.
    prepare: Callable[[argparse.Namespace], Any]
    run: Callable[[Any, EvalSettings, argparse.Namespace, Any], TaskResult]  # (model, settings, args, prepared)
    # The task's own flags: a settings dataclass (a field with help per flag; ``_argument_group_name`` heads
    # them in --help); tasks sharing flags share the class (added once).
    flags: type | None = None
