"""One sampling-options type: ``hicae generate``'s flags and the server's request fields give the same
``SamplingOptions`` (greedy by default; the sampling knobs only with do_sample, refused otherwise on both sides)."""

from __future__ import annotations

from dataclasses import fields

import pytest
from pydantic import ValidationError

from hicae.cli.main import command_parser
from hicae.errors import ConfigError
from hicae.sampling import SamplingOptions
from hicae.serve.schemas import ChatRequest, GenerateRequest, Sampling

BASE = ["--checkpoint", "c", "--memory", "m", "--prompt", "Q?"]


def _cli(*flags: str) -> SamplingOptions:
    *_, options = command_parser("generate").parse([*BASE, *flags])
    return options


def test_cli_flags_and_server_fields_map_to_the_same_type():
    names = [f.name for f in fields(SamplingOptions)]
    assert list(Sampling.model_fields) == names  # the request's sampling fields are the type's, one each
    assert all(f"--{n}" in command_parser("generate")._option_string_actions for n in names)  # so are the flags
    values = {"max_new_tokens": 7, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3}
    cli = _cli(*[w for k, v in values.items() for w in ((f"--{k}",) if v is True else (f"--{k}", str(v)))])
    server = GenerateRequest(prompt="Q?", **values).options()
    assert cli == server == SamplingOptions(**values)
    assert cli.generate_kwargs() == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5}
    # greedy: the defaults (the CLI's own max_new_tokens default aside)
    assert _cli("--max_new_tokens", "9") == GenerateRequest(prompt="Q?", max_new_tokens=9).options()
    # OpenAI's fields: a temperature samples, none (or 0) is greedy
    chat = {"messages": [{"role": "user", "content": "Q?"}], "memory_id": "0" * 32}
    assert ChatRequest(**chat, temperature=0.7, top_p=0.9, seed=3, max_tokens=7).options() == SamplingOptions(
        max_new_tokens=7, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    assert ChatRequest(**chat, max_completion_tokens=9).options() == SamplingOptions(max_new_tokens=9)


def test_sampling_knobs_without_do_sample_are_refused_on_both_sides():
    with pytest.raises(ConfigError, match="--top_k and --seed only apply when sampling"):
        _cli("--top_k", "5", "--seed", "1").check()
    with pytest.raises(ValidationError, match="top_k, seed only apply when sampling"):
        GenerateRequest(prompt="Q?", top_k=5, seed=1)
