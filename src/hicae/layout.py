"""Sequence layouts of the encoder and decoder, as plain id lists.

Both sides use negative *placeholder ids* for positions whose embedding is not a vocabulary
token: the model replaces them (see ``ICAE._embed``). Keeping layouts as id lists lets the
training collator and inference share one code path, and makes them easy to test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Placeholder ids. Vocabulary ids are >= 0.
MEM = -1  # encoder: a memory token (the j-th of a row's k memory tokens, in order)
SLOT = -1  # decoder: a memory slot (filled in order with the example's slots)
AE = -2  # decoder: the [AE] task embedding (reconstruct)
LM = -3  # decoder: the [LM] task embedding (continue)
FT = -4  # decoder: the [FT] task embedding (instruction)
TASK_IDS = {"ae": AE, "lm": LM, "ft": FT}
IGNORE = -100  # label of positions without loss


def segment_lengths(num_tokens: int, mem_size: int, compression_rate: int, mode: str = "even") -> list[int]:
    """Token counts of the segments of a text of ``num_tokens`` tokens; ``S = k * r``.

    ``even`` (the reference's multi-span rule): ``n = ceil(L / S)`` segments of ``ceil(L / n)``
    tokens, the last possibly shorter; for every L >= 1 this yields exactly n non-empty segments.
    ``fixed``: segments of exactly S tokens and a shorter last one, so that segment boundaries do
    not depend on what follows (streaming).
    """
    if num_tokens < 1:
        raise ValueError("a text must have at least one token")
    S = mem_size * compression_rate
    n = math.ceil(num_tokens / S)
    if mode == "fixed":
        size = S
    elif mode == "even":
        size = math.ceil(num_tokens / n)
    else:
        raise ValueError(f"unknown segmentation {mode!r}")
    lengths = [size] * (num_tokens // size)
    if num_tokens % size:
        lengths.append(num_tokens % size)
    assert len(lengths) == n, (num_tokens, mem_size, compression_rate, mode)
    return lengths


@dataclass
class EncoderRows:
    """Flattened encoder input: one row per segment, over all texts of a batch."""

    rows: list[list[int]]  # each: segment token ids followed by k MEM placeholders
    text_lengths: list[int]  # tokens per segment (without memory tokens), one per row
    segments_per_text: list[int]  # how many rows belong to each text, in order


def encoder_rows(token_lists: list[list[int]], mem_size: int, compression_rate: int, mode: str = "even") -> EncoderRows:
    rows: list[list[int]] = []
    seg_lens: list[int] = []
    counts: list[int] = []
    for ids in token_lists:
        start = 0
        lengths = segment_lengths(len(ids), mem_size, compression_rate, mode)
        for n in lengths:
            rows.append(list(ids[start : start + n]) + [MEM] * mem_size)
            seg_lens.append(n)
            start += n
        counts.append(len(lengths))
    return EncoderRows(rows, seg_lens, counts)


def encoder_position_ids(seg_len: int, mem_size: int, layout: str) -> list[int]:
    """Position ids of one encoder row (segment then memory tokens).

    ``contiguous``: 0..seg_len+k-1, what the reference computes for a single unpadded segment.
    ``spread``: memory token j sits at the centre of the j-th of k equal parts of the segment.
    """
    text = list(range(seg_len))
    if layout == "contiguous":
        return text + list(range(seg_len, seg_len + mem_size))
    if layout == "spread":
        return text + chunk_centres(seg_len, mem_size)
    raise ValueError(f"unknown position layout {layout!r}")


def chunk_centres(seg_len: int, mem_size: int) -> list[int]:
    """Position (within its segment) of the centre of each of ``mem_size`` equal parts of the segment."""
    return [min(seg_len - 1, int((j + 0.5) * seg_len / mem_size)) for j in range(mem_size)]


def slot_text_positions(num_tokens: int, mem_size: int, compression_rate: int, mode: str = "even") -> list[int]:
    """Where in its text (0-based) each slot of a ``num_tokens``-token text sits under ``decoder_positions=
    'follow'`` (EPL): slot j of a segment at the centre of the segment's j-th part, offset by the segment's
    start, so slots keep the positions of the tokens they stand for.  -> [n_segments * k]"""
    return span_slot_positions(segment_lengths(num_tokens, mem_size, compression_rate, mode), mem_size)


def span_slot_positions(span_lengths: list[int], mem_size: int) -> list[int]:
    """Text positions of the slots of consecutive spans (segments, or the spans merged blocks stand for)
    of the given lengths, the first beginning at 0: k slots per span at its parts' centres."""
    out: list[int] = []
    start = 0
    for n in span_lengths:
        out += [start + c for c in chunk_centres(n, mem_size)]
        start += n
    return out


@dataclass(frozen=True)
class Placement:
    """Where one memory entry's slots sit in the text they stand for (``decoder_positions='follow'``)."""

    slots: list[int]  # text position (0-based) of each slot, in slot order
    num_tokens: int  # the text's length: [LM]/[FT] and what follows them continue after it


def follow_position_ids(ids: list[int], slot_positions: list[int], num_tokens: int) -> list[int]:
    """Decoder position ids of one layout whose slots follow their text (``decoder_positions='follow'``).

    Tokens before the slots count from 0 (the chat template's ``before``); position ``b`` after them
    is left free and the slots sit at ``b + 1 + slot_positions`` (the text's own positions, shifted
    so that the free position can hold ``[AE]``). Then:

    - ``[AE]`` sits at ``b`` and the reconstruction restarts at ``b + 1``: text token i is read back at
      the position of the slot that holds it (the encoder's position of token i, plus ``b + 1``);
    - ``[LM]`` / ``[FT]`` (and a layout ending in its slots) continue after the text: ``b + 1 +
      num_tokens`` onward, as the continuation and the question follow the text.

    The slot positions do not depend on the task, so ``[slots]`` is one cacheable prefix for
    reconstruct and continue (decoding/prefix_cache.py), and each position after the prompt is the previous
    one plus 1, as ``generate`` continues them.
    """
    if ids.count(SLOT) != len(slot_positions):
        raise ValueError(f"layout has {ids.count(SLOT)} slot positions but {len(slot_positions)} slot positions were given")
    pos: list[int] = []
    nxt = 0
    i = 0
    while i < len(ids):
        if ids[i] != SLOT:
            pos.append(nxt)
            nxt += 1
            i += 1
            continue
        base = nxt + 1
        pos += [base + p for p in slot_positions]
        i += len(slot_positions)
        if i < len(ids) and ids[i] == AE:
            pos.append(nxt)  # [AE] in the free position; the text restarts at base
            nxt = base
            i += 1
        else:
            nxt = base + num_tokens
    return pos


@dataclass
class DecoderExample:
    """One decoder sequence: ``ids`` (vocabulary ids and placeholders) and its ``labels``."""

    ids: list[int]
    labels: list[int]


def with_target(prefix: list[int], target: list[int], loss_from: int = 0) -> DecoderExample:
    """``prefix + target`` with loss on ``target[loss_from:]``.

    ``labels[i]`` is the token at position ``i`` (unshifted, as transformers expects); the loss
    predicts it from position ``i - 1``.
    """
    # a target no longer than loss_from has no loss (an LM continuation within leave_tokens_for_lm); labels stay
    # as long as the ids
    labels = [IGNORE] * (len(prefix) + min(loss_from, len(target))) + list(target[loss_from:])
    return DecoderExample(list(prefix) + list(target), labels)


def fulltext_content(context: str, question: str) -> str:
    """The user turn of a model reading the text itself (the full-text baseline, build-qa's teacher, the
    distillation teacher): the text, a blank line, the question."""
    return f"{context}\n\n{question}"


def ae_example(num_slots: int, text_ids: list[int], eos_id: int) -> DecoderExample:
    """``[slots] [AE] text EOS`` with loss on ``text EOS``."""
    return with_target([SLOT] * num_slots + [AE], list(text_ids) + [eos_id])


def lm_prefix(num_slots: int, task_token: bool = True) -> list[int]:
    """``[slots] [LM]``, or ``[slots]`` alone without the task token (the reference's default)."""
    return [SLOT] * num_slots + ([LM] if task_token else [])


def lm_example(num_slots: int, continuation: list[int], leave_tokens: int, task_token: bool = True) -> DecoderExample:
    """``[slots] [LM] continuation`` (``[LM]`` per ``task_token``) with loss on the continuation but its first ``leave_tokens``."""
    return with_target(lm_prefix(num_slots, task_token), continuation, loss_from=leave_tokens)
