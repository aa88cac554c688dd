"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


def pick_device(name: str | None) -> str:
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return name


def parse_dataclasses(parser: Any, argv: list[str]) -> tuple:
    """HfArgumentParser.parse_args_into_dataclasses, turning unknown flags into a user error."""
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # e.g. "Some specified arguments are not used by the HfArgumentParser"
        raise ConfigError(str(e)) from None
