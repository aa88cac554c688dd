"""Decoding from an explicit generation config: only what hicae means and what the caller asked for.

transformers' ``generate`` fills every option the call leaves unset from the model's own
``generation_config`` (even when a ``generation_config`` is passed: its ``None`` fields are taken
from the model's). Qwen2.5-Instruct ships ``repetition_penalty`` 1.05-1.1, others set
``no_repeat_ngram_size``, ``suppress_tokens`` or sampling defaults; so "greedy" decoding was
penalised greedy decoding, and the memory and full-text paths were penalised differently (the
full-text path counts every context token as a repetition).

``explicit_generation`` therefore swaps the decoder's ``generation_config`` for a fresh one for the
duration of a call: EOS / stop ids, the pad id and ``max_new_tokens`` (hicae's meaning) over
transformers' global defaults (greedy, no penalties, no processors), and the caller's options on
top as keyword arguments. The base model object itself keeps its config (the decoder is a twin
module: its own attribute, the same weights).

``generate_plain`` is the "no compression" baseline: the frozen base model (no slot-side adapters)
answering from plain token ids, decoded as the memory paths decode.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from transformers import GenerationConfig

from ..tokens import cut_at_stop


def hicae_generation_config(stop_ids: list[int], pad_id: int, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding to ``max_new_tokens`` stopping on ``stop_ids``; nothing else is set."""
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids),
                            pad_token_id=pad_id)


@contextlib.contextmanager
def explicit_generation(decoder: Any, config: GenerationConfig) -> Iterator[None]:
    """Within the block, ``decoder.generate`` starts from ``config`` alone (not the base's generation config)."""
    saved = decoder.__dict__.get("generation_config")
    decoder.generation_config = config
    try:
        yield
    finally:
        decoder.generation_config = saved


def generate(decoder: Any, tokens: Any, max_new_tokens: int, **kwargs: Any) -> Any:
    """``decoder.generate(**kwargs)`` from hicae's explicit config (stop ids and pad id of ``tokens``,
    a ``SpecialTokens``); ``kwargs``: the inputs and the caller's options (sampling, streamer, ...)."""
    config = hicae_generation_config(tokens.stop_ids, tokens.pad_id, max_new_tokens)
    with explicit_generation(decoder, config):
        return decoder.generate(**kwargs)


def generate_plain(model: Any, prompts: list[list[int]], max_new_tokens: int, **gen_kwargs: Any) -> list[list[int]]:
    """Greedy decoding of the base model from token ids (left-padded batch); new tokens up to the first stop id.

    ``gen_kwargs``: more options for ``generate`` (e.g. a logits processor that times the first token)."""
    width = max(len(p) for p in prompts)
    pad = model.tokens.pad_id
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=model.device)
    with torch.no_grad(), model.plain_decoding():  # the base itself, no slot-side adapters
        # greedy as the memory paths decode: hicae's explicit config, not the base's
        out = generate(model.decoder, model.tokens, max_new_tokens, input_ids=ids, attention_mask=mask, **gen_kwargs)
    return cut_at_stop(out[:, width:].tolist(), model.tokens.stop_ids)
