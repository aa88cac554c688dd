"""The full-text baseline decodes greedily as the memory paths do: the base's generation_config plays no part."""

from __future__ import annotations

import torch

from hicae.decoding.generation import generate_plain

from conftest import argmax_loop, build_icae, penalised


def test_full_text_baseline_is_an_argmax_loop(qwen3_tokenizer):
    """A base whose generation_config sets a repetition penalty (which, on the full text, would penalise every
    context token) and no_repeat_ngram_size: the baseline is still plain argmax decoding."""
    model = penalised(build_icae(qwen3_tokenizer, "qwen2").model)
    prompts = [model.tokens.chat_ids("The fox jumps over the dog.\n\nWhat jumps?"), model.tokens.chat_ids("Why?")]
    got = generate_plain(model, prompts, 8)
    for ids, out in zip(prompts, got):
        with torch.no_grad():
            embeds = model.decoder.get_input_embeddings()(torch.tensor([ids]))
        assert out == argmax_loop(model, embeds, 8)
    with torch.no_grad():  # the base's own config would have decoded otherwise
        theirs = model.decoder.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False,
                                        pad_token_id=model.tokens.pad_id)
    assert theirs[0, len(prompts[0]):].tolist() != got[0]
