"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def pick_device(name: str | None) -> str:
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):  # torch lists its twenty device types: name ours instead
        raise ConfigError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {name}: hicae runs on auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")
    if dev.type != "cuda" and dev.type != "cpu" and not getattr(torch, dev.type).is_available():
        raise ConfigError(f"--device {name}: {dev.type} is not available on this machine")
    return name


def check_generation(max_new_tokens: int | None, do_sample: bool = False, temperature: float | None = None,
                     top_p: float | None = None) -> None:
    """Generation flags, checked before a model is loaded (transformers would raise mid-run)."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    if not do_sample:
        given = [flag for flag, v in (("--temperature", temperature), ("--top_p", top_p)) if v is not None]
        if given:  # greedy decoding would ignore them: say so rather than decode otherwise than asked
            raise ConfigError(f"{' and '.join(given)} only apply when sampling: add --do_sample, or drop "
                              f"{'them' if len(given) > 1 else 'it'} for greedy decoding")
        return
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"--temperature must be > 0 when sampling (--do_sample), got {temperature}; "
                          "for greedy decoding drop --do_sample (and --temperature)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1], got {top_p}")


def parse_dataclasses(parser: Any, argv: list[str]) -> tuple:
    """HfArgumentParser.parse_args_into_dataclasses, turning unknown flags into a user error."""
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # e.g. "Some specified arguments are not used by the HfArgumentParser"
        raise ConfigError(str(e)) from None
