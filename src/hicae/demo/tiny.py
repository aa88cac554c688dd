"""Tiny random Qwen2 / Qwen3 (and Mistral, for ICAE v2 imports) models built in-process (tests, the demo, CPU benchmarks)."""

from __future__ import annotations

from typing import Any

import torch

from ..shapes import MODEL_SHAPES


def tiny_config(arch: str = "qwen3", vocab_size: int = 151936, **overrides: Any):
    """A small config of the real architecture. ``vocab_size`` must cover the tokenizer (Qwen: 151,669 ids)."""
    from transformers import MistralConfig, Qwen2Config, Qwen3Config

    common = dict(MODEL_SHAPES["tiny"], vocab_size=vocab_size, max_position_embeddings=8192,
                  eos_token_id=151645, pad_token_id=151643)
    common.update(overrides)
    if arch == "qwen3":
        common.setdefault("head_dim", common["hidden_size"] // common["num_attention_heads"])
        return Qwen3Config(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "mistral":  # the released ICAE v2's base architecture; give its tokenizer's ids as overrides
        return MistralConfig(**common)
    raise ValueError(f"unknown tiny architecture {arch!r} (qwen2, qwen3, mistral)")


def tiny_model(arch: str = "qwen3", seed: int = 0, dtype: torch.dtype = torch.float32, attn: str = "sdpa", **overrides: Any):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, **overrides)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.config._name_or_path = f"tiny-{arch}"
    return model.eval()
