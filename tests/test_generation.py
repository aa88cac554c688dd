"""Decoding from memory: KV cache, stopping on the tokenizer's stop ids, batching."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, TEXTS, memory_argmax, penalised

from hicae import DataError

# Random tiny models with the default init (0.02) emit one token forever; larger weights give
# varied greedy outputs, so equalities below compare real sequences.
VARIED = dict(base_overrides=dict(initializer_range=0.3))
PROMPTS = ["What is this about?", "Why?", "Summarise the text in one short sentence, please.", "Who"]
NEW = 8


def _all_outputs(model, mem, **gen_kwargs):
    return {
        "reconstruct": model.reconstruct_ids(mem, max_new_tokens=NEW, **gen_kwargs),
        "continue": model.continue_ids(mem, max_new_tokens=NEW, **gen_kwargs),
        "generate": model.generate_ids(mem, PROMPTS, max_new_tokens=NEW, **gen_kwargs),
    }


def _assert_varied(outputs):
    toks = [t for rows in outputs.values() for r in rows for t in r]
    assert len(set(toks)) >= 10, "degenerate model: the comparison would prove little"


@pytest.fixture(params=ARCHS)
def varied(request, make_icae):
    model = make_icae(request.param, **VARIED)
    mem = model.compress(TEXTS)
    assert len(set(mem.num_slots)) > 1  # different slot counts: left padding in the batch
    return model, mem


def test_kv_cache_equals_no_cache(varied):
    model, mem = varied
    cached = _all_outputs(model, mem)
    uncached = _all_outputs(model, mem, use_cache=False)
    _assert_varied(cached)
    assert cached == uncached
    for rows in cached.values():
        assert all(len(r) == NEW for r in rows)  # no stop id came up: max_new_tokens is honoured


def test_batched_generation_equals_one_at_a_time(varied):
    model, mem = varied
    batched = _all_outputs(model, mem)
    _assert_varied(batched)
    for i in range(len(mem)):
        one = mem[i]
        assert model.reconstruct_ids(one, max_new_tokens=NEW)[0] == batched["reconstruct"][i]
        assert model.continue_ids(one, max_new_tokens=NEW)[0] == batched["continue"][i]
        assert model.generate_ids(one, PROMPTS[i], max_new_tokens=NEW)[0] == batched["generate"][i]


def test_many_prompts_about_one_memory(varied):
    model, mem = varied
    one = mem[2]
    many = model.generate_ids(one, PROMPTS, max_new_tokens=NEW)
    assert many == [model.generate_ids(one, p, max_new_tokens=NEW)[0] for p in PROMPTS]
    assert len({tuple(r) for r in many}) > 1  # the prompt matters
    # one prompt string for many memories
    same = model.generate_ids(mem, "Why?", max_new_tokens=NEW)
    assert same == [model.generate_ids(mem[i], "Why?", max_new_tokens=NEW)[0] for i in range(len(mem))]
    with pytest.raises(DataError, match="prompts for"):
        model.generate_ids(mem[:3], PROMPTS[:2])


def test_text_api_decodes_the_ids(varied, qwen3_tokenizer):
    model, mem = varied
    ids = model.reconstruct_ids(mem, max_new_tokens=NEW)
    assert model.reconstruct(mem, max_new_tokens=NEW) == qwen3_tokenizer.batch_decode(ids, skip_special_tokens=True)
    ids = model.continue_ids(mem, max_new_tokens=NEW)
    assert model.continue_text(mem, max_new_tokens=NEW) == qwen3_tokenizer.batch_decode(ids, skip_special_tokens=True)
    ids = model.generate_ids(mem, PROMPTS, max_new_tokens=NEW)
    assert model.generate(mem, PROMPTS, max_new_tokens=NEW) == qwen3_tokenizer.batch_decode(ids, skip_special_tokens=True)


def test_reconstruct_default_limit(varied):
    model, mem = varied
    out = model.reconstruct_ids(mem[:2])
    assert all(len(r) <= max(mem[:2].num_tokens) + 8 for r in out)


# ---- stopping ---------------------------------------------------------------------------------------


class ForceToken:
    """Forward hook on the decoder's lm_head: make ``token`` the argmax of row ``row`` at decoding step ``step``.

    Step 1 is the prefill (it yields the first new token), with or without the KV cache.
    """

    def __init__(self, token: int, row: int, step: int):
        self.token, self.row, self.step, self.calls = token, row, step, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.step:
            output = output.clone()
            output[self.row, -1, self.token] = output[self.row, -1].max() + 1e4
            return output
        return output


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("flavour", ["chat", "base"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_on_every_stop_id(make_icae, tokenizers, arch, flavour, use_cache):
    # base: EOS <|endoftext|> ends [AE] output, and the chat template's <|im_end|> ends answers
    tok = tokenizers["qwen3" if flavour == "chat" else "qwen3-base-eos"]
    model = make_icae(arch, tokenizer=tok, **VARIED)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    if flavour == "chat":
        assert model.tokens.eos_id == im_end and model.tokens.stop_ids == [im_end]
    else:
        assert model.tokens.eos_id == endoftext
        assert model.tokens.chat_end_id == im_end
        assert sorted(model.tokens.stop_ids) == sorted([endoftext, im_end])
    assert 1 not in model.tokens.stop_ids and 2 not in model.tokens.stop_ids  # not Mistral's
    mem = model.compress(TEXTS[:3])
    kw = {"use_cache": use_cache}
    free = {
        "reconstruct": model.reconstruct_ids(mem, max_new_tokens=NEW, **kw),
        "generate": model.generate_ids(mem, PROMPTS[:3], max_new_tokens=NEW, **kw),
    }
    for rows in free.values():
        assert all(len(r) == NEW for r in rows)
    for stop in model.tokens.stop_ids:
        for what, rows in free.items():
            hook = ForceToken(stop, row=1, step=3)
            handle = model.decoder.lm_head.register_forward_hook(hook)
            try:
                if what == "reconstruct":
                    out = model.reconstruct_ids(mem, max_new_tokens=NEW, **kw)
                else:
                    out = model.generate_ids(mem, PROMPTS[:3], max_new_tokens=NEW, **kw)
            finally:
                handle.remove()
            assert hook.calls == NEW  # the other rows went on to the limit
            assert out[1] == rows[1][:2], (what, stop)  # cut before the stop id, which is not returned
            assert out[0] == rows[0] and out[2] == rows[2]  # the other rows are unaffected
            assert not set(t for r in out for t in r) & set(model.tokens.stop_ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_all_rows_stopping_ends_generation_early(make_icae, arch):
    model = make_icae(arch, **VARIED)
    mem = model.compress(TEXTS[:2])
    eos = model.tokens.eos_id

    class Always:
        calls = 0

        def __call__(self, module, inputs, output):
            Always.calls += 1
            if Always.calls >= 2:
                output = output.clone()
                output[:, -1, eos] = output[:, -1].amax(dim=-1) + 1e4
            return output

    handle = model.decoder.lm_head.register_forward_hook(Always())
    try:
        out = model.reconstruct_ids(mem, max_new_tokens=NEW)
    finally:
        handle.remove()
    assert [len(r) for r in out] == [1, 1]
    assert Always.calls == 2  # generate stopped as soon as every row had emitted EOS


def test_continue_without_lm_token_reads_the_slots_alone(make_icae):
    """``add_special_token_for_lm=False`` (the reference's default): continuing decodes from ``[slots]``."""
    model = make_icae("qwen3", add_special_token_for_lm=False, **VARIED)
    mem = model.compress(TEXTS[:2])
    got = model.continue_ids(mem, max_new_tokens=NEW)
    emb = model.decoder.get_input_embeddings()
    with torch.no_grad():
        for i in range(len(mem)):
            x, want = mem.slots[i].to(model.dtype).unsqueeze(0), []  # [1, n, D]: slots only, no task embedding
            for _ in range(NEW):  # greedy by hand, no cache
                t = int(model.decoder(inputs_embeds=x).logits[0, -1].argmax())
                if t in model.tokens.stop_ids:
                    break
                want.append(t)
                x = torch.cat([x, emb(torch.tensor([[t]]))], dim=1)
            assert got[i] == want
    assert make_icae("qwen3", **VARIED).continue_ids(mem, max_new_tokens=NEW) != got  # [LM] changes the layout


def test_continue_without_lm_token_with_a_prefix_cache(make_icae):
    """Without ``[LM]`` nothing follows the slots: an explicit prefix cache (as ``hicae serve`` passes) and
    the automatic one (rows sharing a memory entry) fall back to uncached decoding, same tokens."""
    model = make_icae("qwen3", add_special_token_for_lm=False, **VARIED)
    mem = model.compress(TEXTS[:2])
    want = model.continue_ids(mem, max_new_tokens=NEW, prefix_cache=False)
    with pytest.warns(UserWarning, match="nothing follows the slots"):
        assert model.continue_ids(mem, max_new_tokens=NEW, prefix_cache=model.prefix_cache(mem, tasks=("lm",))) == want
    assert model.continue_ids(mem[[0, 0, 1]], max_new_tokens=NEW) == [want[0], want[0], want[1]]


# ---- greedy means greedy: the base's generation_config plays no part ----------------------------------------

def test_greedy_ignores_the_base_generation_config(make_icae):
    """reconstruct / continue / generate (with and without the prefix cache) decode exactly as an argmax loop
    although the base's generation_config sets a repetition penalty, no_repeat_ngram_size and sampling values;
    and that config would have changed the output (the test would catch a regression)."""
    model = penalised(make_icae("qwen2"))  # the default init repeats tokens: penalties change its output
    mem = model.compress(TEXTS[:1])
    want = {"ae": memory_argmax(model, mem, "ae"), "lm": memory_argmax(model, mem, "lm"),
            "ft": memory_argmax(model, mem, "ft", PROMPTS[0])}
    cache = model.prefix_cache(mem, tasks=("ft", "ae", "lm"))
    for pc in (False, None, cache):
        assert model.reconstruct_ids(mem, max_new_tokens=NEW, prefix_cache=pc) == [want["ae"]]
        assert model.continue_ids(mem, max_new_tokens=NEW, prefix_cache=pc) == [want["lm"]]
        assert model.generate_ids(mem, PROMPTS[0], max_new_tokens=NEW, prefix_cache=pc) == [want["ft"]]
    assert model.generate_ids(mem, [PROMPTS[0]] * 2, max_new_tokens=NEW) == [want["ft"]] * 2  # automatic cache
    # the base's own config does change greedy decoding: what hicae must not pick up
    rows, (ex,) = model.decoder_examples(mem, "ae")
    with torch.no_grad():
        embeds = model.decoder_inputs(torch.tensor([ex.ids]), torch.cat(list(rows.slots)))
        theirs = model.decoder.generate(inputs_embeds=embeds, max_new_tokens=NEW, do_sample=False,
                                        eos_token_id=model.tokens.stop_ids, pad_token_id=model.tokens.pad_id)
    assert theirs[0].tolist() != want["ae"]
    assert model.decoder.generation_config.repetition_penalty == 1.8  # the base's config is left as it was


def test_sampling_options_still_reach_generate(make_icae):
    """The caller's options are applied on top of hicae's config: a seeded sample differs from greedy."""
    model = penalised(make_icae("qwen2", **VARIED))
    mem = model.compress(TEXTS[:1])
    greedy = model.reconstruct_ids(mem, max_new_tokens=NEW)
    torch.manual_seed(0)
    sampled = model.reconstruct_ids(mem, max_new_tokens=NEW, do_sample=True, temperature=5.0)
    assert sampled != greedy
