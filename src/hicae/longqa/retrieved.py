"""Retrieval over the segments of a flat memory: BM25 picks the segments, the decoder reads only their slots.

A flat (multi-span) memory is one ``k``-slot entry per segment of the document, each compressed on its
own. For a question, BM25 ranks the segments by their text: the document's own segments (kept beside
the memory: the ``text`` index) or the memory read back segment by segment (``read_back``: nothing but
the slots is kept). The best segments are taken, whole, until the slot budget; their slots in document
order are one memory of a text as long as those segments together, which the decoder reads as it reads
any memory (the regime it was fine-tuned in: a few segments, not hundreds).

So at a context budget of ``N`` positions the decoder reads ``N`` slots that stand for ``r * N`` tokens of
the document (``r``: the compression rate), where BM25 over the text reads ``N`` tokens: the memory's
case in long-document QA is more of the document per position of the reader's window.

    mem = model.compress(text)                       # once per document
    texts = segment_texts(model, text)               # or the memory read back: decoded.read_back_segments
    sub, keep = retrieved_memory(model, mem, texts, question, slots=64)
    answer = model.generate(sub, question)[0]

``memory_retrieved_each`` reads the same picks one segment at a time (``read_each``: one ``k``-slot memory
each, the regime the decoder reads best) and keeps the answer the decoder is surest of (the largest mean
log-probability of its greedy tokens and stop): the recall of several picks, the reading of one.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessorList

from ..evaluation.bm25 import rank
from ..layout import segment_lengths
from ..memory import Memory
from .contexts import GreedyConfidence
from .decoded import segment_memory


def segment_ids(model: Any, ids: list[int]) -> list[list[int]]:
    """A text's token ids cut into the segments its flat memory has (the model's segmentation)."""
    cfg = model.icae_config
    out, start = [], 0
    for n in segment_lengths(len(ids), cfg.mem_size, cfg.compression_rate, cfg.segmentation):
        out.append(ids[start : start + n])
        start += n
    return out


def segment_texts(model: Any, text: str) -> list[str]:
    """The texts of the segments ``model.compress(text)`` makes, in order: the ``text`` index."""
    return [model.tokenizer.decode(p) for p in segment_ids(model, model.prepare_texts([text])[0])]


def segments_read(slots_each: int, budget: int, available: int) -> int:
    """How many whole segments of ``slots_each`` slots fit ``budget``: at least one (a budget below one
    segment still reads the best one), at most the ``available`` ones."""
    return min(available, max(1, budget // slots_each))


def pick_segments(texts: list[str], question: str, slots_each: int, budget: int) -> list[int]:
    """Indices (document order) of the best-ranked segments that fit ``budget`` slots (``segments_read``)."""
    return sorted(rank(texts, question)[:segments_read(slots_each, budget, len(texts))])


def sub_memory(model: Any, mem: Memory, keep: list[int]) -> Memory:
    """The memory of the segments ``keep`` (in that order) of a one-text flat memory, as one entry.

    Its text length is the kept segments' together: under ``decoder_positions='follow'`` the slots are
    placed as those of a text of that length (its ``segmentation``), which is exact when every kept
    segment has the full ``k * r`` tokens and otherwise moves slots by a few positions."""
    seg = segment_memory(model, mem)
    if not keep or any(not 0 <= i < len(seg) for i in keep):
        raise ValueError(f"segments {keep} are not a non-empty subset of the memory's {len(seg)}")
    slots = torch.cat([seg.slots[i] for i in keep])  # [len(keep) * k, D]
    return Memory([slots], [sum(seg.num_tokens[i] for i in keep)], [len(keep)], mem.base_model, mem.fingerprint,
                  mem.mem_size, mem.compression_rate, base_weights=mem.base_weights,
                  encoder_weights=mem.encoder_weights)


def retrieved_memory(model: Any, mem: Memory, texts: list[str], question: str, slots: int) -> tuple[Memory, list[int]]:
    """The memory the decoder reads for ``question``: the best BM25 segments of ``mem`` (ranked by
    ``texts``, one per segment) within ``slots``, and their indices."""
    keep = pick_segments(texts, question, model.icae_config.mem_size, slots)
    return sub_memory(model, mem, keep), keep


def read_each(model: Any, mem: Memory, keep: list[int], question: str, max_new_tokens: int
              ) -> list[dict[str, Any]]:
    """The greedy answer to ``question`` from each segment of ``keep`` alone (``sub_memory(mem, [i])``), in
    ``keep``'s order: ``{"segment", "ids", "logprob"}``, ``logprob`` the mean log-probability of the
    answer's tokens and the stop that ended it (``GreedyConfidence``)."""
    out = []
    for i in keep:
        conf = GreedyConfidence()
        ids = model.generate_ids(sub_memory(model, mem, [i]), [question], max_new_tokens=max_new_tokens,
                                 prefix_cache=False, logits_processor=LogitsProcessorList([conf]))[0]
        out.append({"segment": i, "ids": ids, "logprob": conf.mean(len(ids))})
    return out


def surest(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the largest ``logprob`` (the first of equals)."""
    return max(candidates, key=lambda c: c["logprob"])
