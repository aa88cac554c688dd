"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

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
