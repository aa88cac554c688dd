"""decoder_positions='follow' (EPL): slots keep their text's positions in the decoder, everywhere it decodes."""

from __future__ import annotations

import pytest
import torch

from hicae.decoding.handoff import decoder_input_embeddings
from hicae.errors import ConfigError
from hicae.evaluation.decoding import example_nll
from hicae.layout import AE, FT, LM, SLOT, follow_position_ids, slot_text_positions, with_target

from conftest import Example, TEXTS, build_batch, build_icae, ids_of, check_batched_cached_static, placed_argmax_loop

FOLLOW = dict(decoder_positions="follow", position_layout="spread")


def test_slot_positions_are_chunk_centres_over_segments():
    # k=2, r=4: a 12-token text -> even segments of 6 and 6; centres of the halves of each: 1, 4 (+6)
    assert slot_text_positions(12, 2, 4) == [1, 4, 7, 10]
    assert slot_text_positions(3, 2, 4) == [0, 2]  # shorter than k*r: still k slots in one segment
    assert slot_text_positions(10, 2, 4, "fixed") == [2, 6, 8, 9]  # 8 + 2 tokens


def test_follow_layouts_by_hand():
    s = [1, 4]  # slot positions in a 6-token text
    # reconstruct: [slots] at 1+s, [AE] at 0, the text read back from 1 (token i at 1+i)
    assert follow_position_ids([SLOT, SLOT, AE, 7, 8, 9], s, 6) == [2, 5, 0, 1, 2, 3]
    # continue: [LM] and the continuation after the text
    assert follow_position_ids([SLOT, SLOT, LM, 7, 8], s, 6) == [2, 5, 7, 8, 9]
    # a chat question: before at 0.., position 2 left free, slots at 3+s, [FT] and the prompt after the text
    assert follow_position_ids([50, 51, SLOT, SLOT, FT, 60, 61], s, 6) == [0, 1, 4, 7, 9, 10, 11]
    assert follow_position_ids([SLOT, SLOT], s, 6) == [2, 5]  # a cached [slots] prefix: the same slot positions
    with pytest.raises(ValueError, match="slot positions"):
        follow_position_ids([SLOT, AE], s, 6)



@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_generation_continues_the_trained_positions(qwen3_tokenizer, arch):
    """generate() numbers new tokens previous + 1: greedy output == a hand-written loop that places every
    token by follow_position_ids (the rule training uses); and positions matter (sequential differs)."""
    sharp = dict(initializer_range=0.2)  # larger random weights: outputs that depend on their input
    model = build_icae(qwen3_tokenizer, arch, base_overrides=sharp, **FOLLOW).model
    mem = model.compress(TEXTS[0])
    n = mem.num_slots[0]
    got = model.reconstruct_ids(mem, 8, prefix_cache=False)[0]
    want = placed_argmax_loop(model, mem, [SLOT] * n + [AE], 8)
    assert got == want[: len(got)] and len(got) >= min(len(want), 1)
    assert len(set(got)) > 1  # not a degenerate repeat, so the comparison means something
    # the same weights with sequential positions score the reconstruction differently
    seq = build_icae(qwen3_tokenizer, arch, base_overrides=sharp, decoder_positions="sequential",
                     position_layout="spread").model
    text = mem.num_tokens[0]
    ex = [model.ae_example(n, ids_of(qwen3_tokenizer, TEXTS[0]))]
    assert text == len(ids_of(qwen3_tokenizer, TEXTS[0]))
    assert example_nll(model, ex, mem)[0] != pytest.approx(example_nll(seq, ex, seq.compress(TEXTS[0]))[0], rel=1e-4)


def test_batched_cached_static_equal_one_at_a_time(qwen3_tokenizer):
    model = build_icae(qwen3_tokenizer, "qwen3", **FOLLOW).model
    mem = model.compress(TEXTS)  # different lengths: different slot counts and positions per row
    check_batched_cached_static(model, mem, ["What is it about?", "Why?"], row=2)


def test_training_loss_equals_evaluation_nll(qwen3_tokenizer):
    """The training forward (text lengths from the encoder batch) and evaluation (from the memory) place
    tokens alike: the same per-example loss."""
    model = build_icae(qwen3_tokenizer, "qwen3", **FOLLOW, mem_size=2, compression_rate=2).model
    texts = [ids_of(qwen3_tokenizer, t) for t in TEXTS]  # several segments each (k*r = 4)
    batch = build_batch(model, [Example("ae", t) for t in texts])
    with torch.no_grad():
        out = model(**batch)
    mem = model.compress_ids(texts)
    exs = [model.ae_example(n, t) for n, t in zip(mem.num_slots, texts)]
    sums, counts = example_nll(model, exs, mem)
    assert out["ae_loss_sum"].item() == pytest.approx(sum(sums), rel=1e-5)
    assert out["ae_tokens"].item() == sum(counts)
    seq = build_icae(qwen3_tokenizer, "qwen3", mem_size=2, compression_rate=2, position_layout="spread").model
    with torch.no_grad():
        assert seq(**batch)["loss"].item() != pytest.approx(out["loss"].item(), rel=1e-4)


def test_follow_is_refused_where_positions_cannot_travel(qwen3_tokenizer):
    model = build_icae(qwen3_tokenizer, "qwen3", **FOLLOW).model
    with pytest.raises(ConfigError, match="positions"):
        decoder_input_embeddings(model, model.compress(TEXTS[0]), task="reconstruct")


def test_layout_with_text_in_labels_only_is_not_a_slot_run():
    # with_target keeps ids whole; follow positions count every id once
    ex = with_target([SLOT, SLOT, AE], [5, 6])
    assert len(follow_position_ids(ex.ids, [0, 1], 2)) == len(ex.ids)
