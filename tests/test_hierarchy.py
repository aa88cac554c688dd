"""HierarchicalICAE on tiny Qwen2/Qwen3 models: exactness, streaming, batching, gradients, files."""


import pytest
import torch

from hicae import CheckpointError, ConfigError, DataError, HierarchicalICAE, HierarchyConfig, ICAE, ICAEConfig, Memory
from hicae.demo.tiny import tiny_model

from conftest import ARCHS, TINY_ICAE, perturb_trainable

CFG = dict(TINY_ICAE, mem_size=2, compression_rate=2)  # S = 4 tokens: many segments from short texts


def make_h(tok, arch="qwen3", levels=3, g=2, max_slots=None, seed=0, **cfg):
    torch.manual_seed(seed + 100)
    h = HierarchicalICAE(tiny_model(arch, seed=seed), tok, ICAEConfig(**{**CFG, **cfg}),
                         HierarchyConfig(levels=levels, group_size=g, max_slots=max_slots))
    perturb_trainable(h, seed=seed + 1)
    return h.eval()


def ids(tok, n, salt=0):
    text = " ".join(f"w{(i * 7 + salt) % 50}" for i in range(n))
    return tok(text, add_special_tokens=False).input_ids[:n]


def same(m1: Memory, m2: Memory, atol=1e-5):
    assert m1.blocks == m2.blocks and m1.tails == m2.tails and m1.num_tokens == m2.num_tokens
    for a, b in zip(m1.slots, m2.slots):
        assert a.shape == b.shape and (a - b).abs().max().item() <= atol


@pytest.mark.parametrize("arch", ARCHS)
def test_one_level_equals_icae_bit_for_bit(qwen3_tokenizer, arch):
    h = make_h(qwen3_tokenizer, arch, levels=1)
    icae = ICAE(tiny_model(arch), qwen3_tokenizer, ICAEConfig(**CFG, segmentation="fixed"))
    icae.load_state_dict({k: v for k, v in h.state_dict().items() if k != "level_embeddings"})
    icae.eval()
    texts = [ids(qwen3_tokenizer, n, n) for n in (3, 4, 17, 30)]
    with torch.no_grad():
        mh, mi = h.compress_ids(texts), icae.compress_ids(texts)
    for a, b in zip(mh.slots, mi.slots):
        assert torch.equal(a, b)
    assert mh.num_segments == mi.num_segments and mh.levels == 1
    assert h.reconstruct_ids(mh, max_new_tokens=5) == icae.reconstruct_ids(mi, max_new_tokens=5)
    # and a text of one segment gives the default (even-segmentation) ICAE's memory too
    even = ICAE(tiny_model(arch), qwen3_tokenizer, ICAEConfig(**CFG))
    even.load_state_dict(icae.state_dict())
    with torch.no_grad():
        assert torch.equal(even.eval().compress_ids(texts[:2]).slots[1], mh.slots[1])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("max_slots", [None, 8, 12])
def test_streaming_append_equals_compressing_the_whole(qwen3_tokenizer, arch, max_slots):
    h = make_h(qwen3_tokenizer, arch, levels=3, max_slots=max_slots)
    full = ids(qwen3_tokenizer, 45)
    with torch.no_grad():
        whole = h.compress_ids([full])
        for cut in (8, 13, 30):  # aligned (8) and unaligned cuts: the partial segment is kept
            same(h.append_ids(h.compress_ids([full[:cut]]), [full[cut:]]), whole)
        m = h.compress_ids([full[:5]])
        for a, b in ((5, 9), (9, 22), (22, 45)):  # several appends
            m = h.append_ids(m, [full[a:b]])
        same(m, whole)
    if max_slots:
        assert all(n <= max_slots for n in whole.num_slots)
    assert whole.levels >= 2 and sum(b[2] - b[1] for b in whole.blocks[0]) == 12  # ceil(45/4) segments


def test_budget_bounds_memory_for_any_length(qwen3_tokenizer):
    h = make_h(qwen3_tokenizer, levels=3, max_slots=8)
    with torch.no_grad():
        for n in (1, 4, 9, 40, 200):
            m = h.compress_ids([ids(qwen3_tokenizer, n)])
            assert m.num_slots[0] <= 8 and m.num_tokens == [n]
            covered = [t for b in m.blocks[0] for t in range(b[1], b[2])]
            assert covered == list(range(-(-n // 4)))  # every segment exactly once, in order


def test_batched_equals_one_at_a_time(qwen3_tokenizer):
    h = make_h(qwen3_tokenizer, levels=3, max_slots=12, compress_batch_tokens=24)  # several rounds and chunks
    texts = [ids(qwen3_tokenizer, n, n) for n in (2, 13, 37, 60)]
    with torch.no_grad():
        batched = h.compress_ids(texts)
        for i, t in enumerate(texts):
            same(batched[i], h.compress_ids([t]))
        gen_b = h.reconstruct_ids(batched, max_new_tokens=4)
        assert gen_b == [h.reconstruct_ids(batched[i], max_new_tokens=4)[0] for i in range(len(texts))]


def test_gradients_reach_every_level_and_base_stays_frozen(qwen3_tokenizer):
    h = make_h(qwen3_tokenizer, levels=3, g=2)
    h.train()
    ctx = ids(qwen3_tokenizer, 16)  # 4 segments -> one level-3 block (through two level-2 merges)
    n_slots = 2
    ex = h.ae_example(n_slots, ctx)
    from hicae.batching import pad_decoder

    dec = pad_decoder([ex], h.tokens.pad_id)
    out = h(contexts=[ctx], dec_ids=dec.ids, dec_labels=dec.labels, dec_mask=dec.attention_mask)
    out["loss"].backward()
    assert h.level_embeddings.grad is not None
    for lvl in (0, 1):  # levels 2 and 3
        assert h.level_embeddings.grad[lvl].abs().sum() > 0
    assert h.mem_embeddings.grad.abs().sum() > 0
    lora = [p for n, p in h.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for n, p in h.named_parameters() if not p.requires_grad)
    # stop_gradient: level-1 parameters get no gradient through the merges
    h.zero_grad()
    h.hierarchy.stop_gradient = True
    h(contexts=[ctx], dec_ids=dec.ids, dec_labels=dec.labels, dec_mask=dec.attention_mask)["loss"].backward()
    assert h.mem_embeddings.grad is None or h.mem_embeddings.grad.abs().sum() == 0
    assert h.level_embeddings.grad[1].abs().sum() > 0


def test_save_load_model_and_memory_and_refusals(qwen3_tokenizer, tmp_path):
    h = make_h(qwen3_tokenizer, levels=3, max_slots=8)
    text = ids(qwen3_tokenizer, 30)
    with torch.no_grad():
        mem = h.compress_ids([text])
    h.save_pretrained(tmp_path / "ck", save_base=True)
    h2 = HierarchicalICAE.from_pretrained(tmp_path / "ck")
    assert isinstance(h2, HierarchicalICAE) and h2.hierarchy == h.hierarchy
    with torch.no_grad():
        same(h2.eval().compress_ids([text]), mem, atol=0)
    mem.save(tmp_path / "m.mem.safetensors")
    loaded = Memory.load(tmp_path / "m.mem.safetensors")
    same(loaded, mem, atol=0)
    with torch.no_grad():  # a loaded memory can be appended to
        same(h.append_ids(loaded, [ids(qwen3_tokenizer, 10, 3)]), h.append_ids(mem, [ids(qwen3_tokenizer, 10, 3)]))
    other = make_h(qwen3_tokenizer, levels=3, g=3)
    with pytest.raises(CheckpointError, match="fingerprint"):
        other.reconstruct(loaded)
    flat = ICAE(tiny_model("qwen3"), qwen3_tokenizer, ICAEConfig(**CFG, segmentation="fixed"))
    with pytest.raises(CheckpointError, match="fingerprint"):
        flat.reconstruct(loaded)
    with pytest.raises(CheckpointError, match="fingerprint"):
        h.append(flat.compress("some text here"), "more")  # refused before any work


def test_upgrade_from_icae_checkpoint(qwen3_tokenizer, tmp_path):
    icae = ICAE(tiny_model("qwen3"), qwen3_tokenizer, ICAEConfig(**CFG, segmentation="fixed"))
    perturb_trainable(icae)
    icae.save_pretrained(tmp_path / "icae", save_base=True)
    h = ICAE.from_pretrained(tmp_path / "icae", hierarchy=HierarchyConfig(levels=2))
    assert isinstance(h, HierarchicalICAE)
    assert torch.equal(h.level_embeddings[0], icae.mem_embeddings.detach())
    text = ids(qwen3_tokenizer, 3)
    with torch.no_grad():
        assert torch.equal(h.eval().compress_ids([text]).slots[0], icae.eval().compress_ids([text]).slots[0])


def test_bad_input(qwen3_tokenizer):
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        HierarchyConfig(group_size=1)
    h = make_h(qwen3_tokenizer, levels=2)
    with pytest.raises(ConfigError, match="smaller than one block"):
        h.compress("a short text", max_slots=1)
    mem = h.compress("a short text")
    with pytest.raises(DataError, match="empty"):
        h.append(mem, "")
    with pytest.raises(DataError, match="2 texts to append to 1"):
        h.append(mem, ["a", "b"])
    with pytest.raises(DataError, match="empty"):
        h.compress("")


@pytest.mark.parametrize("more", [1, 3, 9])  # shorter than a segment (S = 4 tokens), and longer
def test_append_honours_a_smaller_budget(qwen3_tokenizer, more):
    """A memory made without a budget, appended to with ``max_slots``: the result fits the budget even when the
    appended text completes no segment (nothing new is pushed, yet the old blocks must merge)."""
    h = make_h(qwen3_tokenizer, "qwen3", levels=3)
    with torch.no_grad():
        mem = h.compress_ids([ids(qwen3_tokenizer, 60)])
        assert mem.num_slots[0] > 8
        out = h.append_ids(mem, [ids(qwen3_tokenizer, more, 5)], max_slots=4)
    assert out.num_slots[0] <= 4 and out.num_tokens[0] == 60 + more
    assert out.hierarchy_problem() is None
