"""Per-GPU memory of hicae training under per-layer FSDP (fsdp.py), computed from a model's config.

An estimate from parameter counts and tensor shapes, not a measurement; every term is listed so
it can be checked (``python -m hicae.training.fsdp_memory`` prints the table of docs/training.md). Assumptions:
- base weights in bf16, fully sharded over ``gpus`` (FSDP2, ``reshard_after_forward``);
- the root group (embeddings, LM head, final norm, LoRA, memory and task embeddings) stays
  gathered from forward to the end of backward (FSDP2's default for the root);
- two layers gathered at a time (the one computing and the one prefetched);
- trainable tensors in fp32: weight and gradient gathered in the root group, plus their sharded
  weight, gradient and AdamW moments (16 bytes a parameter, divided by ``gpus``);
- gradient checkpointing: each layer keeps its input ([tokens, D], bf16) for the encoder and the
  decoder, and one layer at a time is recomputed with its full activations;
- AE layout (the longest): the decoder reads the slots, [AE] and the text; cross-entropy in
  chunks of 2048 labelled tokens ([2048, V] fp32 logits and their gradient).
Not included: the CUDA context and allocator fragmentation (a few GB), communication buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..shapes import MODEL_SHAPES

GB = 1e9
CE_CHUNK = 2048  # _CE_CHUNK of model.py


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from a transformers config (Qwen2/Qwen3 layout)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool

    @classmethod
    def from_config(cls, c: Any) -> "Shape":
        qwen2 = getattr(c, "model_type", "") == "qwen2"
        return cls(c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size, c.num_attention_heads,
                   c.num_key_value_heads, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                   bool(c.tie_word_embeddings), qwen2 or bool(getattr(c, "attention_bias", False)), not qwen2)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of a layer."""
        D, q, kv, I = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (D, q), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (q, D),
                "gate_proj": (D, I), "up_proj": (D, I), "down_proj": (I, D)}

    def layer_params(self) -> int:
        n = sum(i * o for i, o in self.linear_shapes().values())
        if self.qkv_bias:
            n += (self.heads + 2 * self.kv_heads) * self.head_dim
        n += 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)  # RMSNorm weights
        return n

    def root_params(self) -> int:
        """Embeddings, LM head (unless tied) and the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()


def trainable_params(shape: Shape, lora_r: int, targets: tuple[str, ...], mem_size: int) -> int:
    """LoRA A and B on each target of every layer, memory tokens and the 3 task embeddings."""
    lin = shape.linear_shapes()
    lora = sum(lora_r * (lin[t][0] + lin[t][1]) for t in targets)
    return shape.layers * lora + (mem_size + 3) * shape.hidden


def fsdp_memory(shape: Shape, gpus: int, *, seq_len: int = 5120, batch: int = 1, lora_r: int = 128,
                targets: tuple[str, ...] = ("q_proj", "v_proj"), mem_size: int = 128, rate: int = 4,
                weight_bytes: int = 2) -> dict[str, float]:
    """Bytes per GPU, by part (see the module docstring), and their ``total``."""
    D, L = shape.hidden, shape.layers
    segments = math.ceil(seq_len / (mem_size * rate))
    enc_tokens = seq_len + segments * mem_size  # every segment followed by its memory tokens
    dec_tokens = segments * mem_size + 1 + seq_len + 1  # slots, [AE], text, EOS
    trained = trainable_params(shape, lora_r, targets, mem_size)
    q, kv, I = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    per_token = 2 * D + 2 * q + 2 * kv + 4 * I  # one layer's saved activations: norms, q, attn out, k, v, MLP
    lora_inputs = len(targets) * (D + lora_r) * 4  # peft computes the adapter in fp32
    parts = {
        "base weights (sharded)": L * shape.layer_params() * weight_bytes / gpus,
        "root group (gathered)": shape.root_params() * weight_bytes,
        "2 gathered layers": 2 * shape.layer_params() * weight_bytes,
        "trainable + AdamW": trained * 8 + trained * 16 / gpus,
        "layer inputs (checkpointing)": batch * L * (enc_tokens + dec_tokens) * D * 2,
        "one layer recomputed": batch * max(enc_tokens, dec_tokens) * (per_token * 2 + lora_inputs),
        "logits chunk + grad": min(CE_CHUNK, batch * (seq_len + 1)) * shape.vocab * 4 * 2,
    }
    parts["total"] = sum(parts.values())
    return parts


# The models of docs/training.md's table, "Memory under FSDP" (their released shapes: shapes.py).
TABLE_MODELS = ("Qwen2.5-32B", "Qwen2.5-72B")


def table(gpus: tuple[int, ...] = (4, 8, 16), **kw: Any) -> str:
    """The markdown table of docs/training.md: GB per GPU for Qwen2.5-32B and -72B."""
    from transformers import Qwen2Config

    head = None
    rows = []
    for name in TABLE_MODELS:
        shape = Shape.from_config(Qwen2Config(**MODEL_SHAPES[name.lower()]))
        for n in gpus:
            parts = fsdp_memory(shape, n, **kw)
            head = head or ["model (params)", "GPUs", *parts]
            rows.append([f"{name} ({shape.params() / 1e9:.2f}B)", str(n), *(f"{v / GB:.1f}" for v in parts.values())])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


if __name__ == "__main__":
    print(table())
