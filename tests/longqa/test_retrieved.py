"""memory_retrieved's parts (hicae.longqa.retrieved): the picked segments' slots are exactly the memory of
those segments' text, the decoder reads them as such, and BM25 picks the segment that holds the words."""

from __future__ import annotations

import pytest
import torch

from transformers import LogitsProcessorList

from hicae.longqa.contexts import GreedyConfidence
from hicae.longqa.retrieved import (pick_segments, read_each, retrieved_memory, segment_ids, segment_texts,
                                    sub_memory, surest)

SENTENCES = [f"Part {i}: the {w} module keeps {i * 3} buffers and logs every {w} event to the console."
             for i, w in enumerate(["network", "storage", "sound", "video", "input", "power", "clock", "memory"])]


@pytest.fixture(params=["follow", "sequential"])
def model(make_icae, request):
    # follow + spread: the slots' positions come from the sub-memory's own length, so this checks them too
    return make_icae("qwen2", decoder_positions=request.param, position_layout="spread", segmentation="fixed")


def _ids(model) -> list[int]:
    return model.tokens.text_ids([" ".join(SENTENCES)])[0]


def test_segments_are_the_encoders_rows(model):
    ids = _ids(model)
    segs = segment_ids(model, ids)
    S = model.icae_config.mem_size * model.icae_config.compression_rate
    assert [t for s in segs for t in s] == ids and all(len(s) == S for s in segs[:-1]) and len(segs) > 4
    assert "".join(segment_texts(model, " ".join(SENTENCES))) == " ".join(SENTENCES)


@torch.no_grad()
def test_retrieved_memory_reads_the_segment_asked_about(model):
    text = " ".join(SENTENCES)
    mem = model.compress(text)
    texts = segment_texts(model, text)
    sub, keep = retrieved_memory(model, mem, texts, "Which events does the clock module log?", 2 * model.icae_config.mem_size)
    assert len(keep) == 2 and any("clock" in texts[i] for i in keep) and sub.num_slots == [2 * model.icae_config.mem_size]
    assert model.generate(sub, "Which module?", max_new_tokens=3)  # the public path decodes it


@torch.no_grad()
def test_sub_memory_is_the_memory_of_the_kept_segments_text(model):
    ids = _ids(model)
    segs = segment_ids(model, ids)
    mem = model.compress_ids([ids])
    keep = [1, 3, 4]  # full-length segments, not adjacent: each was compressed on its own
    sub = sub_memory(model, mem, keep)
    alone = model.compress_ids([[t for i in keep for t in segs[i]]])
    assert sub.num_tokens == alone.num_tokens and sub.num_segments == alone.num_segments == [3]
    torch.testing.assert_close(sub.slots[0], alone.slots[0], rtol=0, atol=0)
    q = "How many buffers does the sound module keep?"
    assert model.generate_ids(sub, [q], max_new_tokens=6) == model.generate_ids(alone, [q], max_new_tokens=6)
    # all segments in order: the memory itself
    whole = sub_memory(model, mem, list(range(len(segs))))
    assert whole.num_tokens == mem.num_tokens and torch.equal(whole.slots[0], mem.slots[0])


def test_sub_memory_refuses_what_the_memory_does_not_have(model):
    mem = model.compress_ids([_ids(model)])
    with pytest.raises(ValueError, match="subset"):
        sub_memory(model, mem, [999])
    with pytest.raises(ValueError, match="subset"):
        sub_memory(model, mem, [])


def test_bm25_picks_the_segment_with_the_words_within_budget():
    texts = [s for s in SENTENCES]
    assert pick_segments(texts, "Which events does the clock module log?", 4, 4) == [6]
    got = pick_segments(texts, "the video module and the power module", 4, 9)  # two whole segments fit 9 slots
    assert got == [3, 5]
    assert pick_segments(texts, "video", 4, 1) == [3]  # a budget under one segment still reads the best one
    assert len(pick_segments(texts, "module", 4, 1000)) == len(texts)


@torch.no_grad()
def test_read_each_answers_from_each_segment_alone_with_its_greedy_logprob(model):
    text = " ".join(SENTENCES)
    mem = model.compress(text)
    q = "How many buffers does the video module keep?"
    keep = [2, 0, 3]
    cands = read_each(model, mem, keep, q, max_new_tokens=5)
    assert [c["segment"] for c in cands] == keep
    for c in cands:
        sub = sub_memory(model, mem, [c["segment"]])
        conf = GreedyConfidence()
        ids = model.generate_ids(sub, [q], max_new_tokens=5, prefix_cache=False,
                                 logits_processor=LogitsProcessorList([conf]))[0]
        assert c["ids"] == ids and c["logprob"] == conf.mean(len(ids))
        # what the clock recorded is the log-probability of each greedy token, teacher-forced
        ex = model.tokens.ft_example(sub.num_slots[0], q, ids)
        hidden = model.decoder_hidden(ex_ids := torch.tensor([ex.ids]), torch.ones_like(ex_ids), sub.slots[0],
                                      model.placements(sub))
        losses, _ = model.labelled_losses(hidden, torch.tensor([ex.labels]))
        n = len(ids)
        torch.testing.assert_close(torch.tensor(conf.logprobs[:n]), -losses[:n].float().cpu(), rtol=0, atol=1e-4)
        assert len(conf.logprobs) in (n, n + 1)  # n + 1: the stop was generated too, and counts in the mean
    assert surest(cands) is max(cands, key=lambda c: c["logprob"])
    assert surest([{"logprob": -1.0, "segment": 4}, {"logprob": -1.0, "segment": 1}])["segment"] == 4


def test_greedy_confidence_mean():
    conf = GreedyConfidence()
    conf.logprobs = [-1.0, -2.0, -3.0]
    assert conf.mean(2) == -2.0 and conf.mean(5) == -2.0 and conf.mean(0) == -1.0
    assert GreedyConfidence().mean(3) == float("-inf")
