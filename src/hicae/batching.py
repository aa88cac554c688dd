"""Turn id-list layouts into padded tensors (one place for both training and inference)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import IGNORE, DecoderExample, EncoderRows


@dataclass
class EncoderBatch:
    ids: torch.Tensor  # [R, T] segment tokens then MEM placeholders, right-padded
    seg_lens: torch.Tensor  # [R] text tokens of each row
    segments_per_text: list[int]


def pad_encoder(rows: EncoderRows, pad_id: int) -> EncoderBatch:
    width = max(len(r) for r in rows.rows)
    ids = torch.full((len(rows.rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows.rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return EncoderBatch(ids, torch.tensor(rows.text_lengths, dtype=torch.long), list(rows.segments_per_text))


@dataclass
class DecoderBatch:
    ids: torch.Tensor  # [B, T] vocabulary ids and placeholders
    labels: torch.Tensor  # [B, T] IGNORE where no loss
    attention_mask: torch.Tensor  # [B, T] 1 on real positions


def pad_decoder(examples: list[DecoderExample], pad_id: int, side: str = "right") -> DecoderBatch:
    """Pad to the longest example; ``side='left'`` for generation (new tokens follow the prompt)."""
    width = max(len(e.ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(e.ids, dtype=torch.long)
        labels[i, sl] = torch.tensor(e.labels, dtype=torch.long)
        mask[i, sl] = 1
    return DecoderBatch(ids, labels, mask)


def budget_chunks(lengths: list[int], budget: int) -> list[list[int]]:
    """Group row indices, longest first, so that ``rows * longest_row <= budget`` in each group.

    Sorting by length keeps padding small; callers scatter results back to the original order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * width > budget:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks
