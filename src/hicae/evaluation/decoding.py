"""Decoder-side primitives of the tasks: per-example NLL (from memory or plain tokens), the chat prompt, decoding ids.

The plain NLL runs ``model.decoder``: the base model without the adapter, i.e. the frozen LLM itself,
so it is the "no compression" baseline (plain-text generation: ``hicae.decoding.generation.generate_plain``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..batching import pad_decoder
from ..errors import ConfigError
from ..layout import DecoderExample
from ..memory import Memory


def example_nll(model: Any, examples: list[DecoderExample], mem: Memory | None = None) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood (nats) of each example's labelled tokens, and their counts.

    ``mem`` given: the layouts hold SLOT/task placeholders, filled with ``mem``'s slots (one entry
    per example, in order) and the learned task embeddings. ``mem`` None: plain vocabulary ids
    through the base model. Batched with right padding; logits only at labelled positions.
    """
    batch = pad_decoder(examples, model.tokens.pad_id, side="right")
    ids, mask, labels = (t.to(model.device) for t in (batch.ids, batch.attention_mask, batch.labels))
    slots = None
    if mem is not None:
        model.check_memory(mem)
        slots = torch.cat([s.to(model.device) for s in mem.slots])
    with torch.no_grad():
        losses, rows = model.token_losses(ids, labels, mask, slots, model.placements(mem) if mem is not None else None)
    B = len(examples)
    sums = torch.zeros(B, dtype=torch.float64, device=losses.device).index_add_(0, rows, losses.double())
    counts = torch.bincount(rows, minlength=B)
    return sums.tolist(), counts.tolist()


def chat_prompt_ids(model: Any, content: str) -> list[int]:
    """Token ids of one user turn holding ``content`` in the tokenizer's chat template, ready for the answer.

    ``content`` (a text and a question) is tokenised as text: special-token strings in it stay text.
    """
    if not getattr(model.tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer has no chat template, so questions cannot be formatted; "
                          "use a chat (Instruct) tokenizer or set tokenizer.chat_template")
    return model.tokens.chat_ids(content)


def decode(model: Any, ids: list[list[int]]) -> list[str]:
    return model.tokenizer.batch_decode(ids, skip_special_tokens=True)
