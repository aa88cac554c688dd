"""Issue 17's slot-side options (hicae.decoder_side): the decoder-side LoRA and the slot projector."""

from __future__ import annotations

import pytest
import torch

from hicae import ICAE, ICAEConfig
from hicae.errors import ConfigError
from hicae.decoding.generation import generate_plain
from hicae.decoding.handoff import decoder_input_embeddings
from hicae.evaluation.decoding import example_nll

from conftest import Example, TEXTS, build_batch, build_icae, ids_of, mixed_examples, perturb_trainable

OPTIONS = [dict(decoder_lora_r=4), dict(slot_projector="mlp"), dict(decoder_lora_r=4, slot_projector="mlp")]


def test_defaults_keep_the_reference_method_and_fingerprint(qwen3_tokenizer):
    plain = build_icae(qwen3_tokenizer, "qwen3").model
    assert plain.slot_projector is None
    assert not any("lora_" in n for n, _ in plain.decoder.named_parameters())
    assert set(plain.trained_embeddings()) == {"mem_embeddings", "task_embeddings"}
    # the new fields enter the memory fingerprint only when set: older checkpoints and memories keep theirs
    cfg = ICAEConfig(mem_size=4)
    legacy = {k: getattr(cfg, k) for k in cfg._MEMORY_FIELDS if k not in cfg._OPTIONAL_MEMORY_FIELDS}
    import hashlib
    import json

    from hicae.config import BASE_SHAPE_KEYS

    blob = json.dumps({"icae": legacy, "base": dict.fromkeys(BASE_SHAPE_KEYS)}, sort_keys=True).encode()
    assert cfg.memory_fingerprint({}) == hashlib.sha256(blob).hexdigest()[:16]
    assert ICAEConfig(mem_size=4, decoder_lora_r=2).memory_fingerprint({}) != cfg.memory_fingerprint({})
    assert ICAEConfig(mem_size=4, slot_projector="mlp").memory_fingerprint({}) != cfg.memory_fingerprint({})


@pytest.mark.parametrize("bad", [dict(decoder_lora_r=-1), dict(slot_projector="linear")])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        ICAEConfig(**bad)


@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_fresh_options_change_nothing_until_trained(qwen3_tokenizer, opts):
    """LoRA B and the projector's output layer start at zero: a fresh model computes the plain method's slots and loss."""
    plain = build_icae(qwen3_tokenizer, "qwen3", perturb=False).model
    opt = build_icae(qwen3_tokenizer, "qwen3", perturb=False, **opts).model
    with torch.no_grad():
        opt.mem_embeddings.copy_(plain.mem_embeddings)
        opt.task_embeddings.copy_(plain.task_embeddings)
        for (n1, p1), (n2, p2) in zip(sorted(plain.encoder.named_parameters()), sorted(opt.encoder.named_parameters())):
            p2.copy_(p1)
    batch = build_batch(plain, mixed_examples(qwen3_tokenizer))
    torch.testing.assert_close(opt.compress(TEXTS).slots[0], plain.compress(TEXTS).slots[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(opt(**batch)["loss"], plain(**batch)["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_options_train_and_only_trainable_tensors_move(qwen3_tokenizer, opts):
    model = build_icae(qwen3_tokenizer, "qwen3", **opts).model
    base = {n: p.detach().clone() for n, p in model.encoder.get_base_model().named_parameters() if "lora_" not in n}
    extra = [n for n in model.trained_embeddings() if n not in ("mem_embeddings", "task_embeddings")]
    assert extra and all(n.startswith(("decoder_lora.", "slot_projector.")) for n in extra)
    before = {n: p.detach().clone() for n, p in model.trained_embeddings().items()}
    batch = build_batch(model, mixed_examples(qwen3_tokenizer))
    model.train()
    model.gradient_checkpointing_enable()
    optim = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=1e-2, weight_decay=0.0)
    for _ in range(2):
        optim.zero_grad()
        model(**batch)["loss"].backward()
        optim.step()
    for n in extra:
        assert not torch.equal(model.trained_embeddings()[n], before[n]), f"{n} did not train"
        assert model.trained_embeddings()[n].dtype == torch.float32
    for n, p in model.encoder.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), f"base weight {n} changed"


def test_decoder_lora_leaves_the_plain_base_untouched(qwen3_tokenizer):
    """Full-text baselines run the frozen base: with a trained decoder adapter, plain NLL and generation
    equal those of the same model without one, while reading slots differs."""
    plain = build_icae(qwen3_tokenizer, "qwen3", seed=3).model
    lora = build_icae(qwen3_tokenizer, "qwen3", seed=3, decoder_lora_r=4).model  # perturbed: B != 0
    ids = [ids_of(qwen3_tokenizer, t) for t in TEXTS]
    from hicae.layout import with_target

    exs = [with_target(x[:3], x[3:]) for x in ids]
    assert example_nll(lora, exs) == example_nll(plain, exs)
    assert generate_plain(lora, [x[:5] for x in ids], 6) == generate_plain(plain, [x[:5] for x in ids], 6)
    mem = lora.compress(TEXTS)
    with lora.plain_decoding():
        off = lora.reconstruct_ids(mem, 6, prefix_cache=False)
    on = lora.reconstruct_ids(mem, 6, prefix_cache=False)
    assert on != off  # the adapter is what reads the slots
    # and the adapter is back on after the plain paths ran
    assert lora.reconstruct_ids(mem, 6, prefix_cache=False) == on


@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_prefix_cache_carries_the_options(qwen3_tokenizer, opts):
    model = build_icae(qwen3_tokenizer, "qwen3", **opts).model
    mem = model.compress(TEXTS[:2])
    cache = model.prefix_cache(mem, tasks=("ft", "ae"))
    prompts = ["What is it about?", "Who jumps?"]
    assert model.generate_ids(mem[0], prompts, 8, prefix_cache=cache) == model.generate_ids(mem[0], prompts, 8,
                                                                                             prefix_cache=False)
    assert model.reconstruct_ids(mem, 8, prefix_cache=cache) == model.reconstruct_ids(mem, 8, prefix_cache=False)


@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_checkpoint_round_trip(tmp_path, qwen3_tokenizer, opts):
    built = build_icae(qwen3_tokenizer, "qwen3", keep_pristine=True, **opts)
    model = built.model
    model.save_pretrained(tmp_path / "ck")
    again = ICAE.from_pretrained(tmp_path / "ck", base_model=built.pristine, tokenizer=qwen3_tokenizer).eval()
    for n, p in model.trained_embeddings().items():
        assert torch.equal(again.trained_embeddings()[n], p), n
    mem = model.compress(TEXTS[:2])
    assert torch.equal(again.compress(TEXTS[:2]).slots[0], mem.slots[0])
    assert again.reconstruct_ids(mem, 6) == model.reconstruct_ids(mem, 6)


def test_handoff_refuses_a_decoder_adapter(qwen3_tokenizer):
    model = build_icae(qwen3_tokenizer, "qwen3", decoder_lora_r=2).model
    with pytest.raises(ConfigError, match="decoder-side LoRA"):
        decoder_input_embeddings(model, model.compress(TEXTS[0]), "Q?")
    # a projector lives in the slots: the hand-off carries it
    proj = build_icae(qwen3_tokenizer, "qwen3", slot_projector="mlp").model
    (emb,) = decoder_input_embeddings(proj, proj.compress(TEXTS[0]), task="reconstruct")
    mem = proj.compress(TEXTS[0])
    assert torch.equal(emb[: mem.num_slots[0]], mem.slots[0].to(emb.dtype))


# ---- slot_source="pooled" -----------------------------------------------------------------------------


def test_pooled_slots_are_part_means_of_the_plain_encoder_states(qwen3_tokenizer):
    """Each slot is the mean of its part's final states: checked against one plain forward per segment."""
    model = build_icae(qwen3_tokenizer, "qwen3", slot_source="pooled").model
    k = model.icae_config.mem_size
    for text in TEXTS:  # 1-3 segments of k*r = 8 tokens; lengths not multiples of k
        ids = ids_of(qwen3_tokenizer, text)
        mem = model.compress(text)
        assert mem.num_slots == [k * mem.num_segments[0]]
        from hicae.layout import segment_lengths

        start, want = 0, []
        for n in segment_lengths(len(ids), k, model.icae_config.compression_rate):
            x = torch.tensor([ids[start : start + n]])
            with torch.no_grad():
                h = model.encoder.get_base_model().model(input_ids=x).last_hidden_state[0]  # [n, D]
            for j in range(k):
                lo, hi = j * n // k, (j + 1) * n // k
                want.append(h[lo:hi].mean(0) if hi > lo else h[min(n - 1, int((j + 0.5) * n / k))])
            start += n
        torch.testing.assert_close(mem.slots[0], torch.stack(want), rtol=1e-5, atol=1e-5)


def test_pooled_batched_equals_one_at_a_time_and_trains(qwen3_tokenizer):
    model = build_icae(qwen3_tokenizer, "qwen3", slot_source="pooled", compress_batch_tokens=24).model
    together = model.compress(TEXTS)
    for i, t in enumerate(TEXTS):
        torch.testing.assert_close(together.slots[i], model.compress(t).slots[0], rtol=1e-5, atol=1e-6)
    batch = build_batch(model, mixed_examples(qwen3_tokenizer))
    model.train()
    lora_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters() if "lora_" in n}
    opt = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=1e-2)
    model(**batch)["loss"].backward()
    g = model.mem_embeddings.grad
    assert g is None or not g.any()  # no memory token is read
    opt.step()
    assert all(not torch.equal(p, lora_before[n]) for n, p in model.encoder.named_parameters() if "lora_" in n)


def test_pooled_merges_are_part_means_of_the_encoder_states_over_their_inputs(qwen3_tokenizer):
    """A pooled hierarchy's level-2 slot j = the mean of the j-th part of the encoder's final states over the
    merged level-1 slots (at their text positions with decoder_positions='follow'): checked by hand."""
    from hicae.config import HierarchyConfig
    from hicae.hierarchy import HierarchicalICAE
    from hicae.demo.tiny import tiny_model

    for follow in (False, True):
        cfg = ICAEConfig(mem_size=2, compression_rate=4, slot_source="pooled", position_layout="spread",
                         decoder_positions="follow" if follow else "sequential", lora_r=4, lora_alpha=8)
        torch.manual_seed(0)
        h = HierarchicalICAE(tiny_model("qwen3"), qwen3_tokenizer, cfg, HierarchyConfig(levels=2, group_size=2)).eval()
        perturb_trainable(h)
        ids = ids_of(qwen3_tokenizer, " ".join(TEXTS))[:16]  # two segments of 8 -> one level-2 block
        assert len(ids) == 16
        with torch.no_grad():
            mem = h.compress_ids([ids])
            assert mem.blocks == [[[2, 0, 2]]]
            inputs = h._encode_segments([ids[:8], ids[8:]]).reshape(1, 4, -1)  # the level-1 slots [1, 2k, D]
            pos = torch.tensor([[1, 5, 9, 13] if follow else [0, 1, 2, 3]])  # their text positions / 0..2k-1
            states = h.encoder.get_base_model().model(inputs_embeds=inputs, position_ids=pos).last_hidden_state[0]
        want = torch.stack([states[0:2].mean(0), states[2:4].mean(0)])
        torch.testing.assert_close(mem.slots[0], want, rtol=1e-5, atol=1e-5)


def test_checkpoint_with_its_base_keeps_the_base_plain(qwen3_tokenizer, tmp_path):
    """save_base=True writes the base model itself, not the decoder twin with its adapter wrapped in: the
    checkpoint reloads on its own base (the fingerprint matches) and decodes as the saved model."""
    model = build_icae(qwen3_tokenizer, "qwen3", decoder_lora_r=2, decoder_lora_alpha=4).model
    perturb_trainable(model)
    model.save_pretrained(tmp_path / "ck", save_base=True)
    back = ICAE.from_pretrained(tmp_path / "ck")
    mem = model.compress(TEXTS[0])
    assert back.reconstruct_ids(back.compress(TEXTS[0]), 6, prefix_cache=False) == model.reconstruct_ids(mem, 6, prefix_cache=False)
