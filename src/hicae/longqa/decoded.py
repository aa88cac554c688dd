"""A flat memory read back as text, segment by segment: what the ``memory_decoded`` condition retrieves from.

Each segment's k slots are a memory of that segment alone (a multi-span memory compresses segments
separately), so ``[AE]`` decoding reconstructs it; the segments' reconstructions in order are the
document as the memory holds it. BM25 over that text within the memory's own budget, then the plain
base answering from the retrieved chunks, shows what the memory holds, apart from whether the decoder
can look it up from the slots directly (``memory_flat``).
"""

from __future__ import annotations

from typing import Any

from ..layout import segment_lengths
from ..memory import Memory


def segment_memory(model: Any, mem: Memory) -> Memory:
    """One entry per segment of a one-text flat memory: its k slots and its token count."""
    cfg = model.icae_config
    k = cfg.mem_size
    if len(mem) != 1 or mem.hierarchical:
        raise ValueError("segment_memory takes the flat memory of one text")
    lens = segment_lengths(mem.num_tokens[0], k, cfg.compression_rate, cfg.segmentation)
    slots = mem.slots[0]
    if slots.shape[0] != len(lens) * k:
        raise ValueError(f"a memory of {slots.shape[0]} slots is not {len(lens)} segments of {k}")
    return Memory([slots[j * k : (j + 1) * k] for j in range(len(lens))], lens, [1] * len(lens), mem.base_model,
                  mem.fingerprint, mem.mem_size, mem.compression_rate, base_weights=mem.base_weights,
                  encoder_weights=mem.encoder_weights)


def read_back_segments(model: Any, mem: Memory, rows: int = 32) -> list[list[int]]:
    """Each segment of a one-text flat memory reconstructed (greedy, ``rows`` segments at a time)."""
    seg = segment_memory(model, mem)
    out: list[list[int]] = []
    limit = max(seg.num_tokens) + 8  # as `hicae eval --task ae` allows
    for i in range(0, len(seg), rows):
        out += model.reconstruct_ids(seg[list(range(i, min(i + rows, len(seg))))], max_new_tokens=limit)
    return out


def read_back(model: Any, mem: Memory, rows: int = 32) -> list[int]:
    """The document's ids as the memory holds them: the segments' reconstructions in order."""
    return [t for ids in read_back_segments(model, mem, rows) for t in ids]
