"""The ICAE model on tiny random Qwen2 / Qwen3 bases (fp32, CPU) with the real Qwen3 tokenizer."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ARCHS, TEXTS, Example, build_batch, build_icae, ids_of, mixed_examples

from hicae import DataError, ICAEConfig
from hicae.batching import EncoderBatch
from hicae.layout import MEM, encoder_position_ids

ATOL = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def count_encoder_calls(model):
    """Count forward calls of the encoder backbone (one per compression chunk)."""
    calls = []
    handle = model.encoder.get_base_model().model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


# ---- 1. batched compression == one at a time ------------------------------------------------------

# Token counts from 1 to several segments (k*r = 8): 1, 2 ... segments, with padding between rows.
LENGTHS = [1, 3, 7, 8, 9, 15, 16, 17, 25, 33, 40]


def _token_lists(tokenizer) -> list[list[int]]:
    pool = ids_of(tokenizer, " ".join(TEXTS * 3))
    assert len(pool) >= max(LENGTHS)
    # different windows, so no two texts share a prefix
    return [pool[i : i + L] for i, L in enumerate(LENGTHS)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("budget", [None, 12, 24])
def test_batched_compression_equals_one_at_a_time(make_icae, qwen3_tokenizer, arch, budget):
    kw = {} if budget is None else {"compress_batch_tokens": budget}
    model = make_icae(arch, **kw)
    lists = _token_lists(qwen3_tokenizer)
    calls, h = count_encoder_calls(model)
    with torch.no_grad():
        mem = model.compress_ids(lists)
    h.remove()
    total_rows = sum(math.ceil(L / 8) for L in LENGTHS)
    if budget is None:
        assert len(calls) == 1  # every segment of every text in one encoder batch
    elif budget == 12:
        assert len(calls) == total_rows  # one 12-token row per chunk
    else:
        assert 1 < len(calls) < total_rows
    assert mem.num_tokens == LENGTHS
    assert mem.num_segments == [math.ceil(L / 8) for L in LENGTHS]
    assert mem.num_slots == [4 * math.ceil(L / 8) for L in LENGTHS]
    worst = 0.0
    for i, ids in enumerate(lists):
        with torch.no_grad():
            alone = model.compress_ids([ids])
        worst = max(worst, max_diff(mem.slots[i], alone.slots[0]))
    assert worst <= ATOL, worst


@pytest.mark.parametrize("arch", ARCHS)
def test_compress_strings_batched_equals_single(make_icae, arch):
    model = make_icae(arch)
    mem = model.compress(TEXTS)
    assert len(mem) == len(TEXTS)
    for i, t in enumerate(TEXTS):
        assert max_diff(mem.slots[i], model.compress(t).slots[0]) <= ATOL
    # the budget only changes scheduling, not results
    model.icae_config.compress_batch_tokens = 12
    mem2 = model.compress(TEXTS)
    for a, b in zip(mem.slots, mem2.slots):
        assert max_diff(a, b) <= ATOL


# ---- 2. segment and slot counts at the model level -------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_slot_counts_every_length(make_icae, qwen3_tokenizer, arch):
    model = make_icae(arch)
    pool = ids_of(qwen3_tokenizer, " ".join(TEXTS * 3))
    lengths = list(range(1, 42))
    with torch.no_grad():
        mem = model.compress_ids([pool[:L] for L in lengths])
    for L, ns, nslot, nt, s in zip(lengths, mem.num_segments, mem.num_slots, mem.num_tokens, mem.slots):
        n = math.ceil(L / 8)
        assert (ns, nslot, nt) == (n, 4 * n, L)
        assert s.shape == (4 * n, model.hidden_size)


@pytest.mark.parametrize("arch", ARCHS)
def test_segments_are_compressed_independently(make_icae, qwen3_tokenizer, arch):
    """A text's slots are its segments' slots, each as if that segment were a text of its own."""
    model = make_icae(arch)
    ids = ids_of(qwen3_tokenizer, TEXTS[3])[:17]  # 17 tokens -> segments of 6, 6, 5
    with torch.no_grad():
        whole = model.compress_ids([ids]).slots[0]
        parts = [model.compress_ids([ids[a:b]]).slots[0] for a, b in [(0, 6), (6, 12), (12, 17)]]
    assert max_diff(whole, torch.cat(parts)) <= ATOL


# ---- 3. position layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("length", [1, 5, 8])
def test_contiguous_layout_reproduces_reference_single_segment(make_icae, qwen3_tokenizer, arch, length):
    """Reference: one forward over [token embeddings; memory embeddings], no position ids, no mask."""
    model = make_icae(arch)
    assert model.icae_config.position_layout == "contiguous"  # the default
    k = model.icae_config.mem_size
    ids = ids_of(qwen3_tokenizer, TEXTS[0])[:length]
    with torch.no_grad():
        ours = model.compress_ids([ids]).slots[0]
        tok = model.encoder.get_input_embeddings()(torch.tensor([ids]))  # [1, L, D]
        x = torch.cat([tok, model.mem_embeddings.unsqueeze(0)], dim=1)  # [1, L+k, D]
        backbone = model.encoder.get_base_model().model  # the LoRA'd transformer, final norm included
        ref = backbone(inputs_embeds=x).last_hidden_state[0, -k:]
        # Also through the peft model's own forward: its last hidden state is after the final norm.
        ref2 = model.encoder(inputs_embeds=x, output_hidden_states=True).hidden_states[-1][0, -k:]
    assert max_diff(ours, ref) <= ATOL
    assert max_diff(ours, ref2) <= ATOL
    # the LoRA adapter is live in the encoder (so this is not the base model's behaviour)
    with torch.no_grad(), model.encoder.disable_adapter():
        plain = backbone(inputs_embeds=x).last_hidden_state[0, -k:]
    assert max_diff(ours, plain) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_spread_layout_differs_and_uses_its_positions(make_icae, qwen3_tokenizer, arch):
    model = make_icae(arch)
    k = model.icae_config.mem_size
    ids = ids_of(qwen3_tokenizer, TEXTS[1])[:8]
    with torch.no_grad():
        contiguous = model.compress_ids([ids]).slots[0]
        model.icae_config.position_layout = "spread"
        spread = model.compress_ids([ids]).slots[0]
        pos = encoder_position_ids(len(ids), k, "spread")
        assert pos[len(ids) :] == [1, 3, 5, 7]
        tok = model.encoder.get_input_embeddings()(torch.tensor([ids]))
        x = torch.cat([tok, model.mem_embeddings.unsqueeze(0)], dim=1)
        backbone = model.encoder.get_base_model().model
        ref = backbone(inputs_embeds=x, position_ids=torch.tensor([pos])).last_hidden_state[0, -k:]
    assert max_diff(contiguous, spread) > 1e-3
    assert max_diff(spread, ref) <= ATOL
    # batched spread == single spread too
    lists = _token_lists(qwen3_tokenizer)
    with torch.no_grad():
        mem = model.compress_ids(lists)
        for i, x_ids in enumerate(lists):
            assert max_diff(mem.slots[i], model.compress_ids([x_ids]).slots[0]) <= ATOL


def test_bad_position_layout_is_a_config_error():
    from hicae import ConfigError

    with pytest.raises(ConfigError, match="position_layout"):
        ICAEConfig(position_layout="diagonal")


# ---- 4. the decoder is the base model, adapter off, one copy of the weights ------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_equals_pristine_base_model(make_built, qwen3_tokenizer, arch):
    built = make_built(arch, keep_pristine=True)
    model, pristine = built.model, built.pristine
    ids = torch.tensor([ids_of(qwen3_tokenizer, TEXTS[0])[:12], ids_of(qwen3_tokenizer, TEXTS[1])[:12]])
    with torch.no_grad():
        ref = pristine(input_ids=ids).logits
        dec = model.decoder(input_ids=ids).logits
        enc = model.encoder(input_ids=ids).logits
        with model.encoder.disable_adapter():
            enc_off = model.encoder(input_ids=ids).logits
    assert torch.equal(dec, ref)
    assert torch.equal(enc_off, ref)  # only the adapter differs between encoder and base
    assert max_diff(enc, ref) > 1e-3  # sanity: the perturbed LoRA is live in the encoder
    assert not any("lora" in n for n, _ in model.decoder.named_modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_shares_the_encoder_base_weights(make_built, arch):
    built = make_built(arch)
    model = built.model
    enc = dict(model.encoder.get_base_model().named_parameters())
    dec = dict(model.decoder.named_parameters())
    assert len(dec) >= 10
    for name, p in dec.items():
        key = name if name in enc else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert p is enc[key], name
        assert p.data_ptr() == enc[key].data_ptr()
        assert not p.requires_grad
    # one copy in all: the ICAE's distinct storages are the base weights plus the trainables
    base_numel = sum(p.numel() for p in dec.values())
    trainable_numel = sum(p.numel() for p in model.trainable_parameters().values())
    ptrs = {}
    for p in model.parameters():
        ptrs[p.data_ptr()] = p.numel()
    assert sum(ptrs.values()) == base_numel + trainable_numel
    # buffers (rotary frequencies) are shared too
    enc_buf = dict(model.encoder.get_base_model().named_buffers())
    for name, b in model.decoder.named_buffers():
        assert b is enc_buf[name], name


@pytest.mark.parametrize("arch", ARCHS)
def test_two_copies_baseline_does_not_share(make_built, arch):
    model = make_built(arch, share_decoder=False).model
    enc_ptrs = {p.data_ptr() for p in model.encoder.parameters()}
    assert not any(p.data_ptr() in enc_ptrs for p in model.decoder.parameters())


# ---- 5. gradients: shared weights == two independent copies ----------------------------------------------

GC_MODES = {
    "off": None,
    "checkpointing": {},  # hicae's default: non-reentrant
    "checkpointing-reentrant": {"use_reentrant": True},
}


def _grads(model, batch, gc):
    model.train()
    if gc is not None:
        model.gradient_checkpointing_enable(gc)
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.detach().clone() for n, p in model.trainable_parameters().items()}


def _check_checkpointing(model, on: bool):
    for tree in (model.decoder, model.encoder):
        layers = [m for m in tree.modules() if hasattr(m, "gradient_checkpointing")]
        assert layers and all(m.gradient_checkpointing == on for m in layers)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gc", list(GC_MODES))
def test_shared_decoder_gradients_equal_two_copies(qwen3_tokenizer, arch, gc):
    shared = build_icae(qwen3_tokenizer, arch, share_decoder=True).model
    copies = build_icae(qwen3_tokenizer, arch, share_decoder=False).model
    ts, tc = shared.trainable_parameters(), copies.trainable_parameters()
    assert sorted(ts) == sorted(tc)
    assert len(ts) == 2 * 2 * 2 + 2  # q/v LoRA A/B in 2 layers + memory + task embeddings
    for n in ts:
        assert torch.equal(ts[n], tc[n]), n
    batch = build_batch(shared, mixed_examples(qwen3_tokenizer))
    loss_s, gs = _grads(shared, batch, GC_MODES[gc])
    loss_c, gcp = _grads(copies, batch, GC_MODES[gc])
    _check_checkpointing(shared, gc != "off")
    assert torch.allclose(loss_s, loss_c, rtol=0, atol=1e-6)
    for n in gs:
        assert gs[n].abs().max() > 0, f"{n}: no gradient"
        torch.testing.assert_close(gs[n], gcp[n], rtol=1e-5, atol=1e-7, msg=n)
    # checkpointing changes memory, not gradients
    if gc != "off":
        ref = build_icae(qwen3_tokenizer, arch).model
        _, g0 = _grads(ref, batch, None)
        for n in gs:
            torch.testing.assert_close(gs[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)


def _naive_disable_adapter_loss(model, batch):
    """The pitfall this design avoids: the decoder as the peft model inside ``disable_adapter()``."""
    spe = batch["segments_per_example"].tolist()
    slots = model.encode_rows(EncoderBatch(batch["enc_ids"], batch["enc_seg_lens"], spe))
    embeds = model.decoder_inputs(batch["dec_ids"], slots.reshape(-1, slots.shape[-1]))
    with model.encoder.disable_adapter():
        hidden = model.encoder.get_base_model().model(
            inputs_embeds=embeds, attention_mask=batch["dec_mask"], use_cache=False
        ).last_hidden_state
    tok_loss, _ = model.labelled_losses(hidden, batch["dec_labels"])
    return tok_loss.mean()


@pytest.mark.parametrize("arch", ["qwen3"])
def test_why_naive_disable_adapter_is_wrong_under_checkpointing(qwen3_tokenizer, arch):
    batch = None
    results = {}
    for mode in GC_MODES:
        model = build_icae(qwen3_tokenizer, arch).model
        batch = batch or build_batch(model, mixed_examples(qwen3_tokenizer))
        loss, good = _grads(model, batch, GC_MODES[mode])
        model.zero_grad(set_to_none=True)
        naive = _naive_disable_adapter_loss(model, batch)
        assert torch.allclose(naive.detach(), loss, atol=1e-6)  # same forward value in every mode
        try:
            naive.backward()
        except torch.utils.checkpoint.CheckpointError:
            results[mode] = "error"
            continue
        diff = max((p.grad - good[n]).abs().max().item() for n, p in model.trainable_parameters().items())
        results[mode] = diff
    assert results["off"] <= 1e-6  # without checkpointing the naive way is right ...
    assert results["checkpointing"] == "error"  # ... non-reentrant recompute notices the LoRA layers ...
    assert results["checkpointing-reentrant"] > 1e-2  # ... reentrant recompute silently runs them
    print("naive disable_adapter() gradient error:", results)


# ---- 6. training --------------------------------------------------------------------------------------


def _snapshot_base(model):
    train = {id(p) for p in model.trainable_parameters().values()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in train}


@pytest.mark.parametrize("arch", ARCHS)
def test_training_changes_exactly_the_trainable_parameters(qwen3_tokenizer, arch):
    model = build_icae(qwen3_tokenizer, arch).model
    batch = build_batch(model, mixed_examples(qwen3_tokenizer))
    assert batch["task"].tolist() == [0, 1, 2, 0]  # ae, lm, ft, ae: every task embedding is used
    base_before = _snapshot_base(model)
    assert len(base_before) >= 10
    train_before = {n: p.detach().clone() for n, p in model.trainable_parameters().items()}
    model.train()
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=1e-3, weight_decay=0.0)
    for _ in range(3):
        opt.zero_grad()
        out = model(**batch)
        out["loss"].backward()
        assert model.task_embeddings.grad.abs().amax(dim=1).gt(0).all()  # every task row is trained
        opt.step()
    for n, p in model.trainable_parameters().items():
        assert not torch.equal(p, train_before[n]), f"{n} did not change"
    # every row moved: no dead memory token, no unused task embedding
    assert (model.mem_embeddings - train_before["mem_embeddings"]).abs().amax(dim=1).gt(0).all()
    assert (model.task_embeddings - train_before["task_embeddings"]).abs().amax(dim=1).gt(0).all()
    after = dict(model.named_parameters())
    for n, before in base_before.items():
        assert torch.equal(after[n], before), f"base weight {n} changed"
        assert not after[n].requires_grad
    # the decoder (the twin) sees those same untouched weights
    for n, p in model.decoder.named_parameters():
        assert p.grad is None, n


TRAIN_TEXTS = ["The cat sat on the mat.", "Rain falls in spring.", "Seven blue stones.", "Qwen has no BOS token."]
TRAIN_STEPS = 60


@pytest.mark.parametrize("arch", ARCHS)
def test_ae_loss_falls(qwen3_tokenizer, arch):
    # A slightly wider tiny model with larger weights, so the frozen decoder can express a target.
    model = build_icae(
        qwen3_tokenizer,
        arch,
        base_overrides=dict(initializer_range=0.2, hidden_size=128, intermediate_size=256),
    ).model
    batch = build_batch(model, [Example("ae", ids_of(qwen3_tokenizer, t)) for t in TRAIN_TEXTS])
    model.train()
    opt = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=5e-3)
    losses = []
    for _ in range(TRAIN_STEPS):
        opt.zero_grad()
        out = model(**batch)
        out["loss"].backward()
        opt.step()
        losses.append((out["ae_loss_sum"] / out["ae_tokens"]).item())
        assert out["loss"].item() == pytest.approx(losses[-1], rel=1e-5)  # an all-AE batch
    windows = [sum(losses[i : i + 10]) / 10 for i in range(0, TRAIN_STEPS, 10)]
    print(f"{arch} AE loss: first {losses[0]:.3f}, final {losses[-1]:.3f}; 10-step means", [round(w, 3) for w in windows])
    assert losses[-1] < 0.5 * losses[0]
    assert windows[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(windows, windows[1:])), windows  # falls steadily


# ---- 11. bad input ------------------------------------------------------------------------------------


def test_empty_text_is_a_data_error(make_icae):
    model = make_icae("qwen3")
    with pytest.raises(DataError, match="empty"):
        model.compress("")
    with pytest.raises(DataError, match="text 1 is empty"):
        model.compress(["fine", ""])
    with pytest.raises(DataError):
        model.compress([])


def test_overlong_text_is_refused_or_truncated(make_icae, qwen3_tokenizer):
    text = TEXTS[3]
    ids = ids_of(qwen3_tokenizer, text)
    assert len(ids) > 10
    model = make_icae("qwen3", model_max_length=10)
    with pytest.raises(DataError) as e:
        model.compress(text)
    msg = str(e.value)
    assert f"{len(ids)} tokens" in msg and "model_max_length=10" in msg and "overlong" in msg
    # exactly at the limit is fine
    assert model.compress(qwen3_tokenizer.decode(ids[:10])).num_tokens == [10]

    model = make_icae("qwen3", model_max_length=10, overlong="truncate")
    mem = model.compress([text, "short"])
    assert mem.num_tokens == [10, len(ids_of(qwen3_tokenizer, "short"))]
    with torch.no_grad():
        head = model.compress_ids([ids[:10]])
    assert max_diff(mem.slots[0], head.slots[0]) <= ATOL


def test_bad_overlong_policy_is_a_config_error():
    from hicae import ConfigError

    with pytest.raises(ConfigError, match="overlong"):
        ICAEConfig(overlong="drop")


def test_encoder_rows_have_memory_placeholders_only_at_the_end(make_icae, qwen3_tokenizer):
    """The model's own batch builder (compress_ids) and build_batch agree on the encoder layout."""
    model = make_icae("qwen3")
    batch = build_batch(model, mixed_examples(qwen3_tokenizer))
    k = model.icae_config.mem_size
    for row, n in zip(batch["enc_ids"].tolist(), batch["enc_seg_lens"].tolist()):
        assert row[n : n + k] == [MEM] * k
        assert MEM not in row[:n] and MEM not in row[n + k :]


def test_compress_is_inference_and_restores_train_mode(make_icae):
    model = make_icae("qwen2")
    model.train()
    mem = model.compress(TEXTS[:2])
    assert model.training and model.encoder.training and model.decoder.training
    assert not any(s.requires_grad for s in mem.slots)
    model.eval()
    again = model.compress(TEXTS[:2])
    assert not model.training
    for a, b in zip(mem.slots, again.slots):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_dtype_conversion_keeps_one_copy(make_icae, arch):
    """``model.to(dtype)`` converts the shared weights once; the decoder still holds the encoder's tensors."""
    model = make_icae(arch)
    before = model.compress(TEXTS[:2])
    model.to(torch.float64)
    enc = {p.data_ptr() for p in model.encoder.parameters()}
    assert all(p.data_ptr() in enc and p.dtype == torch.float64 for p in model.decoder.parameters())
    assert model.dtype == torch.float64 and model.mem_embeddings.dtype == torch.float64
    after = model.compress(TEXTS[:2])
    for a, b in zip(before.slots, after.slots):
        assert b.dtype == torch.float64
        assert max_diff(a.double(), b) <= 1e-4
