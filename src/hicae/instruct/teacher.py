"""The teacher: the plain base model (no adapter) reading the full text, greedy, in its chat format.

Any object with ``decoder``, ``tokenizer``, ``tokens``, ``device`` and ``plain_decoding()`` can
teach: an ICAE (its adapter switched off by ``plain_decoding``) or ``PlainBase`` around a bare
base model, so building data never needs an ICAE checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from ..decoding.generation import generate_plain
from ..evaluation.decoding import chat_prompt_ids, decode
from ..layout import fulltext_content
from ..tokens import SpecialTokens


@dataclass
class PlainBase:
    decoder: Any
    tokenizer: Any
    tokens: SpecialTokens

    @classmethod
    def load(cls, path: str, dtype: str = "bf16", device: str | None = None) -> "PlainBase":
        from ..io.checkpoint import load_base

        base, tok = load_base(path, dtype=dtype, **({"device": device} if device else {}))
        return cls.wrap(base.eval(), tok)

    @classmethod
    def wrap(cls, base: Any, tokenizer: Any) -> "PlainBase":
        return cls(base, tokenizer, SpecialTokens.from_tokenizer(tokenizer, getattr(base, "generation_config", None)))

    @property
    def device(self) -> Any:
        return next(self.decoder.parameters()).device

    @property
    def base_config(self) -> Any:
        return self.decoder.config

    def plain_decoding(self) -> Any:
        return contextlib.nullcontext()  # a bare base has no adapter to switch off


def teacher_answers(model: Any, text: str, prompts: list[str], max_new_tokens: int, batch_size: int = 4) -> list[str]:
    """Greedy answers of the base model to each prompt, reading ``text`` inline (``hicae eval --task qa``'s
    full-text baseline prompt)."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids = [chat_prompt_ids(model, fulltext_content(text, p)) for p in prompts[i : i + batch_size]]
        out += [a.strip() for a in decode(model, generate_plain(model, ids, max_new_tokens))]
    return out
