"""Decoding a request: one ``generate`` call over its rows, from the prefix cache when one applies.

``decode`` is what ``ICAE.generate_ids`` / ``reconstruct_ids`` / ``continue_ids`` and the server's
engine run; ``build_prefix_cache`` is ``ICAE.prefix_cache``. ``model`` is an ``ICAE`` (or a
``HierarchicalICAE``), used through its public methods only: ``decoder_inputs`` (the slots and the
task embedding in the layout's placeholders), ``placements`` / ``batch_positions`` (where the
decoder reads the slots), ``eval_mode``, ``check_memory`` and its ``decoder``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..batching import pad_decoder
from ..errors import DataError
from ..layout import SLOT
from ..memory import Memory
from ..tasks import FT, TASKS
from ..tokens import cut_at_stop
from .generation import explicit_generation, hicae_generation_config
from .prefix_cache import PrefixCache, chat_prefix_lengths, generate_cached, resolve, slot_prefix_lengths
from .requests import Request
from .static import generation_kwargs


def prefix_lengths(request: Request) -> list[int] | None:
    """How much of each row's layout depends on the memory only (cacheable); None: not cacheable."""
    if request.task == FT:
        return chat_prefix_lengths(request.examples)
    return slot_prefix_lengths(request.examples)


def decode(model: Any, request: Request, max_new_tokens: int, *, prefix_cache: Any = None,
           encoder_weights: str | None = None, **gen_kwargs: Any) -> list[list[int]]:
    """Greedy (or sampled, via ``gen_kwargs``) decoding of the request's rows, batched with left padding;
    each row's new tokens up to its first stop id.

    ``prefix_cache``: a ``PrefixCache``, a list of one per row, ``None`` (automatic: used when rows
    share a memory entry) or ``False`` (never); see ``hicae.decoding.prefix_cache``.

    ``encoder_weights``: the model's ``encoder_weights()`` if the caller already has it (a server, whose
    weights do not change, computes it once). The memory is still checked on every call, against it,
    rather than against a fingerprint recomputed from the encoder's tensors (a few ms on a real model).
    """
    mem, examples = request.mem, request.examples
    model.check_memory(mem, encoder_weights=encoder_weights)
    # Only hicae's settings and the caller's: the base's generation_config (Qwen's repetition penalty,
    # no_repeat_ngram_size, sampling defaults ...) plays no part (generation.py).
    kwargs = {**gen_kwargs, "max_new_tokens": max_new_tokens}
    config = hicae_generation_config(model.tokens.stop_ids, model.tokens.pad_id, max_new_tokens)
    prefix_lens = prefix_lengths(request)
    with model.eval_mode(), explicit_generation(model.decoder, config):
        cache = resolve(model, mem, prefix_lens, prefix_cache, kwargs, encoder_weights)  # reads that config
        if cache is not None:
            out = generate_cached(model, mem, examples, prefix_lens, cache, kwargs)  # type: ignore[arg-type]
        else:
            batch = pad_decoder(examples, model.tokens.pad_id, side="left")
            slots = torch.cat([s.to(model.device) for s in mem.slots])
            embeds = model.decoder_inputs(batch.ids.to(model.device), slots)  # [B, T, D]
            fast = generation_kwargs(model.decoding, model, embeds.shape[1] + max_new_tokens)
            pos = model.batch_positions(batch.ids, batch.attention_mask, model.placements(mem))
            if pos is not None:  # generate continues them: each new token at the previous position + 1
                fast["position_ids"] = pos.to(model.device)
            out = model.decoder.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask.to(model.device),
                                         **fast, **kwargs)
    return cut_at_stop(out.tolist(), model.tokens.stop_ids)  # only new tokens: generate was given embeddings


def build_prefix_cache(model: Any, mem: Memory, tasks: tuple[str, ...] | list[str] = ("ft",)) -> PrefixCache:
    """The decoder's KV cache of ``mem``'s prompt-independent prefixes of ``tasks``, computed now
    (see ``ICAE.prefix_cache``); prefixes of other tasks are computed on first use."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise DataError(f"unknown tasks {sorted(unknown)} (choose from {list(TASKS)})")
    cache = PrefixCache(model, mem)
    keys = []
    if "ft" in tasks and getattr(model.tokenizer, "chat_template", None):
        exs = [model.tokens.ft_example(n, "", None) for n in mem.num_slots]
        # a second probe: a template whose text before the memory depends on the prompt is not cached
        lens = chat_prefix_lengths(exs + [model.tokens.ft_example(mem.num_slots[0], "?", None)])
        if lens is not None:
            keys += [(e, tuple(x.ids[:p])) for e, (x, p) in enumerate(zip(exs, lens))]
    # [slots] is the prefix of "ae" and of "lm" with its [LM] token; without it (the reference's
    # layout) "lm" decodes uncached (see slot_prefix_lengths)
    if "ae" in tasks or ("lm" in tasks and model.icae_config.add_special_token_for_lm):
        keys += [(e, tuple([SLOT] * n)) for e, n in enumerate(mem.num_slots)]
    if keys and cache.supported:
        with model.eval_mode():
            cache.ensure(model, keys)
    return cache
