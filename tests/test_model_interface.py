"""One interface for flat and hierarchical models: ``hierarchical``, ``compress(..., max_slots)``, ``num_slots``.

Callers ask these rather than the class; ``num_slots`` must be exactly what ``compress`` makes.
"""

import pytest
import torch

from hicae import DataError, HierarchicalICAE, HierarchyConfig, ICAE, ICAEConfig
from hicae.demo.tiny import tiny_model

from conftest import TINY_ICAE

LENGTHS = (1, 3, 4, 5, 8, 9, 17, 31, 64)  # around segment edges (S = 4 tokens)
CFG = dict(TINY_ICAE, mem_size=2, compression_rate=2)


def text_of(tok, n: int) -> str:
    """A text of exactly ``n`` tokens."""
    ids = tok(" ".join(f"w{i % 50}" for i in range(n)), add_special_tokens=False).input_ids[:n]
    return tok.decode(ids)


@pytest.fixture(scope="module")
def models(qwen3_tokenizer):
    torch.manual_seed(0)
    flat = ICAE(tiny_model("qwen3", seed=0), qwen3_tokenizer, ICAEConfig(**CFG, segmentation="fixed")).eval()
    hier = HierarchicalICAE(tiny_model("qwen3", seed=0), qwen3_tokenizer, ICAEConfig(**CFG),
                            HierarchyConfig(levels=3, group_size=2, max_slots=8)).eval()
    return flat, hier


def test_hierarchical_property(models):
    flat, hier = models
    assert flat.hierarchical is False and hier.hierarchical is True


@pytest.mark.parametrize("budget", [None, 6, 12])
def test_num_slots_is_what_compress_makes(models, qwen3_tokenizer, budget):
    flat, hier = models
    texts = [text_of(qwen3_tokenizer, n) for n in LENGTHS]
    mem = hier.compress(texts, max_slots=budget)
    assert mem.num_slots == [hier.num_slots(n, budget) for n in mem.num_tokens]
    assert sorted(set(mem.num_tokens)) == sorted(LENGTHS)  # the texts are the lengths meant
    if budget is None:
        mem = flat.compress(texts)
        assert mem.num_slots == [flat.num_slots(n) for n in mem.num_tokens]


def test_flat_compress_takes_a_budget_it_fits(models, qwen3_tokenizer):
    flat, _ = models
    text = text_of(qwen3_tokenizer, 8)  # 2 segments: 4 slots
    assert flat.compress(text, max_slots=4).num_slots == flat.compress(text).num_slots == [4]
    with torch.no_grad():
        assert flat.compress_ids([[5] * 8], max_slots=4).num_slots == [4]


def test_flat_compress_refuses_a_budget_it_cannot_fit(models, qwen3_tokenizer):
    flat, _ = models
    with pytest.raises(DataError) as e:
        flat.compress([text_of(qwen3_tokenizer, 3), text_of(qwen3_tokenizer, 9)], max_slots=4)
    msg = str(e.value)
    assert "text 1 needs 6 slots, over max_slots=4" in msg and "flat ICAE" in msg and "--hierarchical" in msg
    assert "\n" not in msg
