"""Segment rule, encoder rows, position layouts, decoder layouts and padding (pure functions)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hicae.batching import budget_chunks, pad_decoder, pad_encoder
from hicae.layout import (
    AE,
    FT,
    IGNORE,
    LM,
    MEM,
    SLOT,
    DecoderExample,
    encoder_position_ids,
    encoder_rows,
    segment_lengths,
    with_target,
)


def check_rule(L: int, k: int, r: int) -> None:
    lengths = segment_lengths(L, k, r)
    n = math.ceil(L / (k * r))
    size = math.ceil(L / n)
    assert len(lengths) == n
    assert lengths[:-1] == [size] * (n - 1)
    assert 1 <= lengths[-1] <= size
    assert sum(lengths) == L
    assert max(lengths) <= k * r  # a segment never exceeds k*r tokens


def check_rows(token_lists: list[list[int]], k: int, r: int) -> None:
    rows = encoder_rows(token_lists, k, r)
    assert len(rows.segments_per_text) == len(token_lists)
    assert sum(rows.segments_per_text) == len(rows.rows) == len(rows.text_lengths)
    start = 0
    for ids, nseg in zip(token_lists, rows.segments_per_text):
        assert nseg == math.ceil(len(ids) / (k * r))
        mine = rows.rows[start : start + nseg]
        lens = rows.text_lengths[start : start + nseg]
        assert lens == segment_lengths(len(ids), k, r)
        for row, n in zip(mine, lens):
            assert len(row) == n + k
            assert row[n:] == [MEM] * k  # exactly k memory tokens, right after the segment
            assert MEM not in row[:n]
        # every token exactly once, in order
        assert [t for row, n in zip(mine, lens) for t in row[:n]] == ids
        start += nseg


def test_segment_rule_exhaustive_small_range():
    for k in range(1, 5):
        for r in range(1, 5):
            for L in range(1, 6 * k * r + 2):
                check_rule(L, k, r)


def test_segment_rule_examples():
    assert segment_lengths(1, 4, 2) == [1]
    assert segment_lengths(8, 4, 2) == [8]
    assert segment_lengths(9, 4, 2) == [5, 4]
    assert segment_lengths(10, 2, 2) == [4, 4, 2]
    assert segment_lengths(17, 4, 2) == [6, 6, 5]
    assert segment_lengths(5120, 128, 4) == [512] * 10
    assert segment_lengths(513, 128, 4) == [257, 256]


def test_segment_rule_rejects_empty():
    with pytest.raises(ValueError):
        segment_lengths(0, 4, 2)


@settings(max_examples=300, deadline=None)
@given(L=st.integers(1, 20000), k=st.integers(1, 256), r=st.integers(1, 16))
def test_segment_rule_property(L, k, r):
    check_rule(L, k, r)


@settings(max_examples=150, deadline=None)
@given(
    lens=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    k=st.integers(1, 8),
    r=st.integers(1, 4),
)
def test_encoder_rows_cover_every_token_once_in_order(lens, k, r):
    token_lists = []
    nxt = 0
    for n in lens:  # distinct token ids, so order and coverage are checked exactly
        token_lists.append(list(range(nxt, nxt + n)))
        nxt += n
    check_rows(token_lists, k, r)


def test_encoder_rows_exhaustive_small():
    for k, r in [(4, 2), (1, 1), (3, 2)]:
        check_rows([list(range(L)) for L in range(1, 40)], k, r)


def test_pad_encoder():
    rows = encoder_rows([[5, 6, 7], list(range(10, 20))], mem_size=2, compression_rate=3)
    b = pad_encoder(rows, pad_id=99)
    # text 0: 1 segment of 3; text 1: 2 segments of 5
    assert b.seg_lens.tolist() == [3, 5, 5]
    assert b.segments_per_text == [1, 2]
    assert b.ids.tolist() == [
        [5, 6, 7, MEM, MEM, 99, 99],
        [10, 11, 12, 13, 14, MEM, MEM],
        [15, 16, 17, 18, 19, MEM, MEM],
    ]


# ---- position layouts ----------------------------------------------------------------------------


def test_contiguous_positions():
    assert encoder_position_ids(5, 3, "contiguous") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert encoder_position_ids(1, 4, "contiguous") == [0, 1, 2, 3, 4]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 600), k=st.integers(1, 130))
def test_spread_positions_valid(n, k):
    pos = encoder_position_ids(n, k, "spread")
    assert len(pos) == n + k
    assert pos[:n] == list(range(n))
    mem = pos[n:]
    assert all(0 <= p <= n - 1 for p in mem)  # inside the summarised span
    assert mem == sorted(mem)  # in order
    for j, p in enumerate(mem):  # memory token j is the token under the centre of the j-th of k equal parts
        centre2k = (2 * j + 1) * n  # centre * 2k, in integers
        assert 2 * k * p <= centre2k < 2 * k * (p + 1)


def test_spread_positions_example():
    assert encoder_position_ids(8, 4, "spread")[8:] == [1, 3, 5, 7]
    assert encoder_position_ids(2, 4, "spread")[2:] == [0, 0, 1, 1]


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown position layout"):
        encoder_position_ids(3, 2, "diagonal")


# ---- decoder layouts -----------------------------------------------------------------------------


def test_placeholders_are_negative_and_distinct():
    assert MEM < 0 and SLOT < 0
    assert len({SLOT, AE, LM, FT, IGNORE}) == 5
    assert all(x < 0 for x in (AE, LM, FT))


def test_with_target_labels_unshifted():
    ex = with_target([SLOT, SLOT, AE], [7, 8, 9])
    assert ex.ids == [SLOT, SLOT, AE, 7, 8, 9]
    assert ex.labels == [IGNORE, IGNORE, IGNORE, 7, 8, 9]
    ex = with_target([SLOT, LM], [1, 2, 3, 4], loss_from=2)
    assert ex.ids == [SLOT, LM, 1, 2, 3, 4]
    assert ex.labels == [IGNORE, IGNORE, IGNORE, IGNORE, 3, 4]
    # a continuation shorter than loss_from (min_tokens_for_lm below leave_tokens_for_lm): no loss, same length
    ex = with_target([SLOT, LM], [1, 2, 3], loss_from=8)
    assert ex.ids == [SLOT, LM, 1, 2, 3] and ex.labels == [IGNORE] * 5


def test_pad_decoder_right_and_left():
    exs = [DecoderExample([1, 2, 3], [IGNORE, 2, 3]), DecoderExample([4], [IGNORE])]
    r = pad_decoder(exs, pad_id=0, side="right")
    assert r.ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert r.labels.tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE]]
    assert r.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    lft = pad_decoder(exs, pad_id=0, side="left")
    assert lft.ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert lft.labels.tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE]]
    assert lft.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert r.ids.dtype == torch.long


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=30), extra=st.integers(0, 100))
def test_budget_chunks_partition_and_budget(lengths, extra):
    budget = max(lengths) + extra
    chunks = budget_chunks(lengths, budget)
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    for c in chunks:
        width = max(lengths[i] for i in c)
        assert len(c) * width <= budget
    # longest first overall
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
