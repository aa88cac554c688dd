"""Fine-tuning on long inputs: memories of many segments (flat multi-span) and of hierarchical merges.

The decoder learns to read hundreds to thousands of slots only if its fine-tuning records have
inputs of many segments: ``hicae build-qa --text_tokens`` makes them, and these tests pin what the
collator and the models do with them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from hicae import HierarchicalICAE, HierarchyConfig, ICAEConfig
from hicae.training.data import Collator
from hicae.layout import FT, IGNORE, SLOT
from hicae.demo.tiny import tiny_model

from conftest import TINY_ICAE, perturb_trainable

TEXT = " ".join(f"Step {i}: the daemon reads section {i % 7} of its configuration and logs the result." for i in range(40))
RECORD = {"index": 0, "where": "qa.jsonl:1", "input": TEXT, "prompt": "What does step 3 read?", "answer": "Section 3."}


def test_flat_record_of_many_segments_reads_segments_times_k_slots(qwen3_tokenizer):
    cfg = ICAEConfig(**{**TINY_ICAE, "model_max_length": 4096})
    from hicae.tokens import SpecialTokens

    tokens = SpecialTokens.from_tokenizer(qwen3_tokenizer)
    b = Collator(qwen3_tokenizer, tokens, cfg, "finetune")([RECORD])
    L = len(tokens.text_ids([TEXT])[0])
    segs = math.ceil(L / (cfg.mem_size * cfg.compression_rate))
    assert L > 500 and segs > 60  # a long input: many segments
    assert b["segments_per_example"].tolist() == [segs] and b["enc_seg_lens"].sum().item() == L
    assert b["dec_ids"][0].tolist().count(SLOT) == segs * cfg.mem_size and FT in b["dec_ids"][0].tolist()


def _hier(tok, max_slots):
    torch.manual_seed(100)
    base = tiny_model("qwen3", seed=0)
    pristine = copy.deepcopy(base)
    h = HierarchicalICAE(base, tok, ICAEConfig(**{**TINY_ICAE, "mem_size": 2}),
                         HierarchyConfig(levels=4, group_size=2, max_slots=max_slots, max_text_tokens=4096))
    perturb_trainable(h, seed=1)
    return h.eval(), pristine


def test_hierarchical_ft_loss_equals_a_hand_computation(qwen3_tokenizer):
    h, pristine = _hier(qwen3_tokenizer, max_slots=32)
    col = Collator(qwen3_tokenizer, h.tokens, h.icae_config, "finetune", hierarchy=h.hierarchy)
    b = col([RECORD])
    with torch.no_grad():
        loss = h(**b)["loss"].item()
        mem = h.compress_ids(b["contexts"])
        # the collator planned as many slots as the hierarchy makes, within the budget, from merges
        assert b["dec_ids"][0].tolist().count(SLOT) == mem.num_slots[0] <= 32 and mem.levels > 1
        # by hand: the frozen base reads [embeddings with slots and the FT embedding in place]
        ids = b["dec_ids"][0]
        x = pristine.get_input_embeddings()(ids.clamp(min=0)).clone()
        x[ids == SLOT] = mem.slots[0]
        x[ids == FT] = h.task_embeddings[2]
        logits = pristine(inputs_embeds=x[None]).logits[0]
        labels = b["dec_labels"][0]
        sel = labels[1:] != IGNORE
        want = F.cross_entropy(logits[:-1][sel].float(), labels[1:][sel]).item()
    assert abs(loss - want) < 1e-4, (loss, want)


def test_hierarchical_ft_trains_through_the_merges(qwen3_tokenizer):
    h, _ = _hier(qwen3_tokenizer, max_slots=32)
    h.train()
    b = Collator(qwen3_tokenizer, h.tokens, h.icae_config, "finetune", hierarchy=h.hierarchy)([RECORD])
    h(**b)["loss"].backward()
    assert h.level_embeddings.grad is not None and h.level_embeddings.grad.abs().sum() > 0
