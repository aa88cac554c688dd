"""``setting(default, help)``: a settings-dataclass field with its flag's help (``hicae.cli.flags`` makes the flag)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(default: Any, help: str, **meta: Any) -> Any:  # noqa: A002 - argparse's word
    """``meta``: the flag's other keys, e.g. ``aliases`` (old spellings) or ``choices``."""
    return field(default=default, metadata={"help": help, **meta})
