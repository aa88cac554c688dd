"""HierarchicalICAE with decoder_positions='follow': blocks' slots sit at the centres of the spans they stand
for, in the decoder and in the merges; streaming, batching, caching and training agree with decoding."""

import pytest
import torch

from hicae import HierarchicalICAE, HierarchyConfig, ICAE, ICAEConfig, Memory
from hicae.batching import pad_decoder
from hicae.evaluation.decoding import example_nll
from hicae.hierarchy.plan import Block, Merge
from hicae.layout import AE, SLOT, slot_text_positions
from hicae.demo.tiny import tiny_model

from conftest import TINY_ICAE, check_batched_cached_static, perturb_trainable, placed_argmax_loop

FOLLOW = dict(TINY_ICAE, mem_size=2, compression_rate=4, decoder_positions="follow", position_layout="spread")  # S = 8


def make_h(tok, levels=3, g=2, max_slots=None, seed=0, **cfg):
    torch.manual_seed(seed + 100)
    h = HierarchicalICAE(tiny_model("qwen3", seed=seed, initializer_range=0.2), tok, ICAEConfig(**{**FOLLOW, **cfg}),
                         HierarchyConfig(levels=levels, group_size=g, max_slots=max_slots))
    perturb_trainable(h, seed=seed + 1)
    return h.eval()


def ids(tok, n, salt=0):
    text = " ".join(f"w{(i * 7 + salt) % 50}" for i in range(n))
    out = tok(text, add_special_tokens=False).input_ids[:n]
    assert len(out) == n
    return out


def test_placements_by_hand(qwen3_tokenizer):
    h = make_h(qwen3_tokenizer)
    # a level-2 block over segments 0..3 (32 tokens) and the tail block of 3 tokens (35 in all), k = 2
    mem = Memory([torch.zeros(4, 8)], [35], [5], "m", "f", 2, 4, 2, {"segment_tokens": 8},
                 [[[2, 0, 4], [1, 4, 5]]], [[1, 2, 3]])
    (p,) = h.placements(mem)
    assert p.num_tokens == 35
    assert p.slots == [8, 24, 32, 34]  # centres of the halves of 0..31, then of 32..34
    # a merge of a level-2 block (segments 0..1) and two level-1 blocks reads its inputs at their text
    # positions from the merged span's start, and its memory tokens at the merged span's part centres
    m = Merge(Block(3, 4, 8, 9), [5, 6, 7], [(4, 6), (6, 7), (7, 8)])
    assert h._merge_positions([m]) == [[4, 12, 18, 22, 26, 30, 8, 24]]
    assert make_h(qwen3_tokenizer, position_layout="contiguous")._merge_positions([m]) == [[4, 12, 18, 22, 26, 30,
                                                                                            32, 33]]


def test_level_one_memory_is_placed_as_a_flat_one(qwen3_tokenizer):
    """Before any merge, every block is one segment: the flat model's (fixed-segmentation) placement."""
    h = make_h(qwen3_tokenizer, levels=3, g=4)
    for n in (3, 8, 13, 24):
        mem = h.compress_ids([ids(qwen3_tokenizer, n)])
        assert mem.levels == 1
        assert h.placements(mem)[0].slots == slot_text_positions(n, 2, 4, "fixed")


@pytest.mark.parametrize("source", ["memory_tokens", "pooled"])
def test_streaming_append_equals_compressing_the_whole(qwen3_tokenizer, source):
    h = make_h(qwen3_tokenizer, levels=3, max_slots=6, slot_source=source)
    full = ids(qwen3_tokenizer, 70)
    with torch.no_grad():
        whole = h.compress_ids([full])
        for cut in (16, 21):
            part = h.append_ids(h.compress_ids([full[:cut]]), [full[cut:]])
            assert part.blocks == whole.blocks and part.num_tokens == whole.num_tokens
            assert (part.slots[0] - whole.slots[0]).abs().max().item() <= 1e-5
    assert whole.levels == 3
    assert h.placements(part) == h.placements(whole)


def test_merges_read_text_positions(qwen3_tokenizer):
    """The same weights compress differently with sequential positions (the merge positions are used), and
    a one-level model with follow places nothing differently from the flat model."""
    h = make_h(qwen3_tokenizer, levels=2, g=2)
    seq = make_h(qwen3_tokenizer, levels=2, g=2, decoder_positions="sequential")
    seq.load_state_dict(h.state_dict())
    text = ids(qwen3_tokenizer, 16)  # two segments -> one level-2 block
    with torch.no_grad():
        a, b = h.compress_ids([text]), seq.compress_ids([text])
    assert a.blocks == b.blocks == [[[2, 0, 2]]]
    assert not torch.allclose(a.slots[0], b.slots[0], atol=1e-4)



@pytest.mark.parametrize("source", ["memory_tokens", "pooled"])
def test_generation_batching_and_cache_agree(qwen3_tokenizer, source):
    h = make_h(qwen3_tokenizer, levels=3, max_slots=8, slot_source=source)
    texts = [ids(qwen3_tokenizer, n, n) for n in (5, 30, 61)]
    with torch.no_grad():
        mem = h.compress_ids(texts)
    assert max(mem.levels, 1) >= 2
    got = h.reconstruct_ids(mem[2], 8, prefix_cache=False)[0]
    assert got == placed_argmax_loop(h, mem[2], [SLOT] * mem.num_slots[2] + [AE], 8)[: len(got)]
    check_batched_cached_static(h, mem)


@pytest.mark.parametrize("source", ["memory_tokens", "pooled"])
def test_training_loss_equals_evaluation_nll(qwen3_tokenizer, source):
    h = make_h(qwen3_tokenizer, levels=3, max_slots=8, slot_source=source)
    texts = [ids(qwen3_tokenizer, n, n) for n in (13, 40)]
    with torch.no_grad():
        mem = h.compress_ids(texts)
        exs = [h.ae_example(n, t) for n, t in zip(mem.num_slots, texts)]
        dec = pad_decoder(exs, h.tokens.pad_id)
        out = h(contexts=texts, dec_ids=dec.ids, dec_labels=dec.labels, dec_mask=dec.attention_mask,
                task=torch.zeros(2, dtype=torch.long))
    sums, counts = example_nll(h, exs, mem)
    assert out["ae_loss_sum"].item() == pytest.approx(sum(sums), rel=1e-5)
    assert out["ae_tokens"].item() == sum(counts)
    seq = make_h(qwen3_tokenizer, levels=3, max_slots=8, decoder_positions="sequential", slot_source=source)
    seq.load_state_dict(h.state_dict())
    with torch.no_grad():
        other = seq(contexts=texts, dec_ids=dec.ids, dec_labels=dec.labels, dec_mask=dec.attention_mask)
    assert other["loss"].item() != pytest.approx(out["loss"].item(), rel=1e-4)


def test_upgrade_from_a_flat_follow_checkpoint(qwen3_tokenizer, tmp_path):
    """A flat follow ICAE's checkpoint (with a decoder-side adapter, as the shipped recipe trains) loads into
    the hierarchy: level-1 memories are the flat model's (fixed segmentation) slot for slot, at the same
    positions, and the decoder reads them with the same adapter."""
    torch.manual_seed(3)
    cfg = ICAEConfig(**FOLLOW, segmentation="fixed", decoder_lora_r=2, decoder_lora_alpha=4)
    flat = ICAE(tiny_model("qwen3", initializer_range=0.2), qwen3_tokenizer, cfg)
    perturb_trainable(flat, seed=4)
    flat.save_pretrained(tmp_path / "flat", save_base=True)
    h = ICAE.from_pretrained(tmp_path / "flat", hierarchy=HierarchyConfig(levels=2, group_size=4))
    assert isinstance(h, HierarchicalICAE) and h.icae_config.decoder_positions == "follow"
    text = ids(qwen3_tokenizer, 20)
    with torch.no_grad():
        a, b = h.compress_ids([text]), flat.eval().compress_ids([text])
    assert torch.allclose(a.slots[0], b.slots[0], atol=1e-6)
    assert h.placements(a)[0].slots == flat.placements(b)[0].slots
    assert h.reconstruct_ids(a, 6, prefix_cache=False) == flat.reconstruct_ids(b, 6, prefix_cache=False)
    assert h.icae_config.decoder_lora_r == 2
