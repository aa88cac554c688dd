"""Per-layer FSDP2 sharding of the twin encoder/decoder (src/hicae/training/fsdp.py), in this process.

One process with a one-rank gloo group: fully_shard still shards, gathers and frees each group,
so which layers are gathered when, and the gradients, can be checked without launching anything
(the two-process run against one process is in test_distributed.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import TINY_ICAE
from torch.distributed.tensor import DTensor

from hicae import ICAE, ICAEConfig
from hicae.training.data import Collator
from hicae.training.fsdp import full_trained_parameters, layer_pairs, shard_icae
from hicae.demo.tiny import tiny_model

TEXTS = ["the quick brown fox jumps over the lazy dog again and again", "alpha beta gamma delta river stone"]


def build(tok) -> ICAE:
    model = ICAE(tiny_model("qwen3", num_hidden_layers=3, initializer_range=0.5), tok, ICAEConfig(**TINY_ICAE))
    with torch.no_grad():  # a non-zero LoRA B, so that gradients reach every LoRA weight
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
    model.gradient_checkpointing_enable()
    return model.train()


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_each_layer_is_gathered_alone_and_gradients_equal_the_unsharded_model(qwen3_tokenizer, one_rank_group):
    plain, sharded = build(qwen3_tokenizer), build(qwen3_tokenizer)
    batch = Collator(qwen3_tokenizer, plain.tokens, plain.icae_config, "pretrain", 0.0, seed=0)([{"text": t} for t in TEXTS])
    loss = plain(**batch)["loss"]
    loss.backward()

    shard_icae(sharded)
    pairs = layer_pairs(sharded)
    assert all(isinstance(d.self_attn.q_proj.weight, DTensor) for _, d in pairs)  # the decoder's weights are sharded too
    gathered: list[tuple[int, list[int]]] = []

    def probe(i):
        def hook(module, args):  # runs after FSDP's own pre-forward (which gathers the layer)
            gathered.append((i, [j for j, (_, d) in enumerate(pairs) if not isinstance(d.self_attn.q_proj.weight, DTensor)]))
        return hook

    for i, (_, dec) in enumerate(pairs):
        dec.mlp.down_proj.register_forward_pre_hook(probe(i))  # one module, run by both trees' layer i
    got = sharded(**batch)["loss"]
    got.backward()
    assert got.item() == pytest.approx(loss.item(), rel=1e-6)
    # encoder pass, decoder pass, and both recomputed in backward (checkpointing): 4 calls per layer,
    # each with only its own layer gathered (a group of encoder+decoder layer i would stay gathered
    # from the encoder's call to the decoder's: all layers at once)
    assert len(gathered) == 4 * len(pairs)
    assert all(now == [i] for i, now in gathered), gathered
    want = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters() if p.requires_grad}
    assert grads.keys() == want.keys()
    for n in want:
        # float32 sums in another order: within 1e-5 of the gradient's scale
        assert (grads[n] - want[n]).abs().max() <= 1e-5 * want[n].abs().max(), n
    with full_trained_parameters(sharded):  # what a checkpoint saves: plain full tensors
        full = sharded.trained_tensors()
        assert not any(isinstance(v, DTensor) for v in full.values())
        assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in plain.trained_tensors().items()}
    assert all(isinstance(p, DTensor) for p in sharded.trainable_parameters().values())  # sharded again


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("qwen3", True), ("qwen2", False)])
def test_memory_calculator_counts_the_parameters_of_real_models(qwen3_tokenizer, arch, tied):
    """The calculator's parameter counts equal those of a built model (base, and ICAE's trainable)."""
    from hicae.training.fsdp_memory import Shape, trainable_params

    base = tiny_model(arch, tie_word_embeddings=tied, vocab_size=151680)
    shape = Shape.from_config(base.config)
    assert shape.params() == sum(p.numel() for p in base.parameters())
    model = ICAE(base, qwen3_tokenizer, ICAEConfig(**TINY_ICAE, lora_target_modules=["q_proj", "k_proj", "down_proj"]))
    want = sum(p.numel() for p in model.trainable_parameters().values())
    assert trainable_params(shape, 4, ("q_proj", "k_proj", "down_proj"), TINY_ICAE["mem_size"]) == want


def test_memory_calculator_arithmetic_by_hand():
    from hicae.training.fsdp_memory import Shape, fsdp_memory

    # D=8, 2 layers, I=16, V=32, 2 heads of 4, 1 kv head, tied, no biases, no q/k norms
    shape = Shape(8, 2, 16, 32, 2, 1, 4, tied=True, qkv_bias=False, qk_norm=False)
    assert shape.layer_params() == 64 + 32 + 32 + 64 + 3 * 128 + 16 and shape.root_params() == 32 * 8 + 8
    got = fsdp_memory(shape, 2, seq_len=10, lora_r=2, targets=("q_proj", "v_proj"), mem_size=2, rate=2)
    # 3 segments of 4 tokens: encoder 10 + 3*2 tokens, decoder 6 slots + [AE] + 10 + EOS
    # trainable: per layer 2*(8+8) + 2*(8+4) = 56, two layers, + (2 + 3)*8 embeddings = 152
    want = {
        "base weights (sharded)": 2 * 592 * 2 / 2,
        "root group (gathered)": 264 * 2,
        "2 gathered layers": 2 * 592 * 2,
        "trainable + AdamW": 152 * 8 + 152 * 16 / 2,
        "layer inputs (checkpointing)": 2 * (16 + 18) * 8 * 2,
        "one layer recomputed": 18 * ((2 * 8 + 2 * 8 + 2 * 4 + 4 * 16) * 2 + 2 * (8 + 2) * 4),
        "logits chunk + grad": 11 * 32 * 4 * 2,
    }
    want["total"] = sum(want.values())
    assert got == want and want["total"] == 15600


def test_memory_calculator_uses_the_models_logits_chunk():
    """fsdp_memory keeps its own copy (it imports no torch model code): it must follow the model's."""
    from hicae import model
    from hicae.training import fsdp_memory

    assert fsdp_memory.CE_CHUNK == model._CE_CHUNK
