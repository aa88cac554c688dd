"""Speed paths (hicae.decoding.static, hicae.speed): static-cache and compiled decoding, and the compiled encoder,
equal the eager paths."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, TEXTS

from hicae import ConfigError
from hicae.decoding.static import DecodingOptions, static_length

VARIED = dict(base_overrides=dict(initializer_range=0.3))  # varied greedy outputs (see test_generation.py)
PROMPTS = ["What is this about?", "Why?", "Summarise the text in one short sentence, please."]
NEW = 10


def varied_tokens(rows) -> int:
    return len({t for r in rows for t in r})


def outputs(model, mem, **kw):
    """Greedy outputs of every decoding entry point: per-memory prompts (no shared prefix),
    many prompts about one memory (automatic prefix cache), explicit cache off, reconstruct, continue."""
    one = mem[[0]]
    return {
        "generate": model.generate_ids(mem, PROMPTS[: len(mem)], max_new_tokens=NEW, **kw),
        "one_memory_cached": model.generate_ids(one, PROMPTS, max_new_tokens=NEW, **kw),
        "one_memory_uncached": model.generate_ids(one, PROMPTS, max_new_tokens=NEW, prefix_cache=False, **kw),
        "prebuilt_cache": model.generate_ids(one, PROMPTS, max_new_tokens=NEW, prefix_cache=model.prefix_cache(one), **kw),
        "reconstruct": model.reconstruct_ids(mem, max_new_tokens=NEW, **kw),
        "continue": model.continue_ids(mem, max_new_tokens=NEW, **kw),
    }


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bucket", [1, 7, 256])
def test_static_cache_equals_dynamic(make_icae, arch, bucket):
    model = make_icae(arch, **VARIED)
    mem = model.compress(TEXTS[:3])
    ref = outputs(model, mem)
    assert varied_tokens(ref["generate"]) > 5  # a test on constant outputs would prove little
    model.set_decoding("static", bucket=bucket)
    assert outputs(model, mem) == ref


def test_static_cache_is_used(make_icae, monkeypatch):
    """The static path really hands generate a StaticCache of a bucketed length (not a silent fallback)."""
    from transformers import StaticCache

    model = make_icae(**VARIED).set_decoding("static", bucket=64)
    seen = []
    orig = model.decoder.generate

    def spy(*a, **kw):
        seen.append(kw.get("past_key_values"))
        return orig(*a, **kw)

    monkeypatch.setattr(model.decoder, "generate", spy)
    mem = model.compress(TEXTS[:2])
    model.generate_ids(mem, PROMPTS[:2], max_new_tokens=NEW, prefix_cache=False)
    model.generate_ids(mem[[0]], PROMPTS, max_new_tokens=NEW)  # through the prefix cache
    assert len(seen) == 2 and all(isinstance(c, StaticCache) for c in seen)
    assert all(layer.max_cache_len % 64 == 0 for c in seen for layer in c.layers)


def test_decoding_options_validate():
    with pytest.raises(ConfigError, match="unknown decoding mode"):
        DecodingOptions("fast")
    with pytest.raises(ConfigError, match="bucket"):
        DecodingOptions("static", bucket=0)
    assert [static_length(n, 256) for n in (1, 256, 257)] == [256, 256, 512]


def test_compiled_decoding_equals_dynamic(make_icae):
    """transformers' automatic torch.compile of the decode step (forced on CPU) gives the eager tokens."""
    model = make_icae("qwen3", **VARIED)
    mem = model.compress(TEXTS[:2])
    ref_gen = model.generate_ids(mem, PROMPTS[:2], max_new_tokens=NEW, prefix_cache=False)
    ref_many = model.generate_ids(mem[[0]], PROMPTS, max_new_tokens=NEW)
    model.set_decoding("compiled", bucket=64)
    assert model.generate_ids(mem, PROMPTS[:2], max_new_tokens=NEW, prefix_cache=False) == ref_gen
    assert model.generate_ids(mem[[0]], PROMPTS, max_new_tokens=NEW) == ref_many  # prefix cache + compiled step


def test_compiled_encoder_equals_eager(make_icae):
    model = make_icae("qwen3")
    texts = TEXTS + [TEXTS[0] + " " + TEXTS[1]]  # ragged: several chunk shapes
    ref = model.compress(texts)
    keys = set(model.state_dict())
    model.compile_encoder()
    assert set(model.state_dict()) == keys  # the compiled function is not a submodule
    got = model.compress(texts)
    assert got.num_slots == ref.num_slots
    for a, b in zip(got.slots, ref.slots):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # another length runs through the same compiled (dynamic-shape) function
    again = model.compress(TEXTS[2])
    model.compile_encoder(enabled=False)
    torch.testing.assert_close(again.slots[0], model.compress(TEXTS[2]).slots[0], rtol=1e-4, atol=1e-5)


def bf16_icae(tokenizer):
    """A tiny bf16 ICAE whose adapter (fp32, as peft keeps it) is non-zero."""
    from hicae import ICAE, ICAEConfig
    from hicae.demo.tiny import tiny_model

    torch.manual_seed(0)
    model = ICAE(tiny_model("qwen3", dtype=torch.bfloat16), tokenizer,
                 ICAEConfig(mem_size=4, compression_rate=2, lora_r=4, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in model.encoder.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.05)
    return model


def test_inference_runs_the_adapter_in_the_model_dtype(qwen3_tokenizer):
    """bf16 model: peft keeps LoRA weights in fp32; compression computes them in bf16 and puts the
    fp32 tensors back bit for bit; training (autograd on) uses them as stored."""
    model = bf16_icae(qwen3_tokenizer)
    lora = {n: p for n, p in model.encoder.named_parameters() if "lora_" in n}
    before = {n: p.detach().clone() for n, p in lora.items()}
    assert all(p.dtype == torch.float32 for p in lora.values())
    seen = []
    a_name, a_param = next((n, p) for n, p in lora.items() if "lora_A" in n)
    handle = model.encoder.get_base_model().model.register_forward_pre_hook(lambda *_: seen.append(a_param.dtype))
    mem = model.compress(TEXTS[:2])
    assert seen and set(seen) == {torch.bfloat16}
    for n, p in lora.items():  # restored exactly, same dtype
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    # the same as casting the adapter to bf16 for good
    with torch.no_grad():
        for p in lora.values():
            p.data = p.data.to(torch.bfloat16)
    ref = model.compress(TEXTS[:2])
    for a, b in zip(mem.slots, ref.slots):
        assert torch.equal(a, b)
    with torch.no_grad():
        for n, p in lora.items():
            p.data = before[n].clone()
    seen.clear()
    model.encoder.train()
    ids = qwen3_tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    model.run_encoder([len(ids[:6]) + 4], lambda idx, w: (model._encoder_embeds(torch.tensor([ids[:6] + [-1] * 4])),
                                                          torch.arange(w).unsqueeze(0)))
    assert seen == [torch.float32]
    handle.remove()


def test_compiled_encoder_with_bf16_adapter_cast(qwen3_tokenizer):
    """The compiled encoder sees the adapter's bf16 copies (a new tensor each call) and stays equal to eager."""
    model = bf16_icae(qwen3_tokenizer)
    ref = model.compress(TEXTS)
    model.compile_encoder()
    for _ in range(2):  # second call: fresh bf16 copies of the adapter weights
        got = model.compress(TEXTS)
        for a, b in zip(got.slots, ref.slots):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_output_layer_gets_a_contiguous_input(qwen3_tokenizer):
    """generate's first step feeds the frozen head ``hidden[:, -1:]`` (strided); our pre-hook makes it contiguous,
    so torch multiplies with ``mm`` instead of copying the transposed 152k-row weight per row (decoding/static.py).
    The hook is added once however often a base (whose head the decoder shares) is wrapped."""
    from conftest import build_icae

    from hicae.decoding.static import contiguous_head_input

    model = build_icae(qwen3_tokenizer, "qwen2", **VARIED).model
    head = model.decoder.get_output_embeddings()
    contiguous_head_input(model.decoder)
    assert len(head._forward_pre_hooks) == 1
    seen = []
    # what matmul's fold test reads: the strides of a freshly made tensor of that shape (not is_contiguous())
    head.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[1], args[0].stride(),
                                                                torch.empty(args[0].shape).stride())))
    mem = model.compress(TEXTS[:2])
    model.generate_ids(mem, PROMPTS[:2], max_new_tokens=3, prefix_cache=False)
    model.generate_ids(mem[0], PROMPTS[:1], max_new_tokens=3, prefix_cache=False)  # one row: [1, 1, D]
    assert len(seen) == 6 and all(got == want for _, got, want in seen) and seen[0][0] == seen[3][0] == 1
