"""decoder_input_embeddings equals what transformers' generate feeds the decoder, row by row."""

import pytest
import torch

from hicae.decoding.handoff import decoder_input_embeddings
from hicae.errors import DataError

from conftest import TEXTS


def _captured_inputs(model, call):
    """inputs_embeds [B, T, D] and attention_mask [B, T] of the decoder's first forward in ``call``."""
    seen = []

    def hook(module, args, kwargs):
        if not seen:
            seen.append((kwargs["inputs_embeds"].detach().clone(), kwargs["attention_mask"].detach().clone()))

    handle = model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen[0]


def _rows(embeds, mask):
    return [e[m.bool()] for e, m in zip(embeds, mask)]  # each [T_i, D]: left padding removed


@pytest.mark.parametrize("tok", ["qwen3", "qwen2.5"])
def test_handoff_equals_generate_inputs(make_icae, tokenizers, tok):
    model = make_icae("qwen2", tokenizer=tokenizers[tok])
    mem = model.compress(TEXTS[:3])  # 2, 1 and 1 segments: rows of different lengths
    cases = [
        ("answer", ["Which animal?", "What is compressed, and why?", "BOS?"],
         lambda: model.generate(mem, ["Which animal?", "What is compressed, and why?", "BOS?"], max_new_tokens=2,
                                prefix_cache=False)),
        ("reconstruct", None, lambda: model.reconstruct(mem, max_new_tokens=2, prefix_cache=False)),
        ("continue", None, lambda: model.continue_text(mem, max_new_tokens=2, prefix_cache=False)),
    ]
    for task, prompts, call in cases:
        embeds, mask = _captured_inputs(model, call)
        got = decoder_input_embeddings(model, mem, prompts, task=task)
        want = _rows(embeds, mask)
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == model.dtype
            assert torch.equal(g, w), task


def test_handoff_broadcasts_prompts_and_refuses_bad_input(make_icae):
    model = make_icae("qwen3")
    mem = model.compress(TEXTS[0])
    prompts = ["Who jumps?", "Where?"]
    embeds, mask = _captured_inputs(model, lambda: model.generate(mem, prompts, max_new_tokens=1, prefix_cache=False))
    got = decoder_input_embeddings(model, mem, prompts)
    assert all(torch.equal(g, w) for g, w in zip(got, _rows(embeds, mask))) and len(got) == 2
    with pytest.raises(DataError, match="unknown task"):
        decoder_input_embeddings(model, mem, task="summarise")
    with pytest.raises(DataError, match="takes no prompts"):
        decoder_input_embeddings(model, mem, ["x"], task="reconstruct")


def test_vllm_example_imports_without_vllm():
    """examples/vllm_decode.py cannot run here (no GPU, no vLLM); it must at least load, vLLM imported lazily."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "vllm_decode.py"
    spec = importlib.util.spec_from_file_location("vllm_decode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and callable(module.hicae_inputs)
