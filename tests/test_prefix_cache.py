"""Compress once, ask many: decoding from a cached memory prefix equals decoding without it, and the prefix runs once."""

from __future__ import annotations


import pytest
import torch
from conftest import ARCHS, TEXTS, perturb_trainable, tokenizer_variant

from hicae import DataError, HierarchicalICAE, HierarchyConfig, ICAEConfig
from hicae.decoding.prefix_cache import PrefixCache, chat_prefix_lengths, unsupported_reason
from hicae.layout import FT, SLOT
from hicae.demo.tiny import tiny_model

VARIED = dict(base_overrides=dict(initializer_range=0.3))  # varied greedy outputs (see test_generation.py)
# different token lengths, so the prompt part of a batch is padded
PROMPTS = ["What is this about?", "Why?", "Summarise the text in one short sentence, please.", "Who", "Name it.",
           "Is the fox quick or slow, and where does it jump?"]
NEW = 8
OFF = dict(prefix_cache=False)


class PrefixPasses:
    """Forward pre-hook on the decoder's transformer: the (batch, length) of every forward call."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.decoder.model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs["input_ids"]
        self.shapes.append(tuple(x.shape[:2]))

    def longer_than(self, n: int) -> list[tuple[int, int]]:
        return [s for s in self.shapes if s[1] > n]

    def remove(self):
        self.handle.remove()


def varied_tokens(rows) -> int:
    return len({t for r in rows for t in r})


@pytest.fixture(params=ARCHS)
def varied(request, make_icae):
    model = make_icae(request.param, **VARIED)
    mem = model.compress(TEXTS)
    assert len(set(mem.num_slots)) > 1
    return model, mem


def chat_prefix_len(model, num_slots: int) -> int:
    ex = model.tokens.ft_example(num_slots, "x", None)
    return ex.ids.index(FT) + 1


# ---- equality with the uncached path ---------------------------------------------------------------


def test_many_prompts_about_one_memory(varied):
    model, mem = varied
    for i in (0, 3):
        one = mem[i]
        plain = model.generate_ids(one, PROMPTS, max_new_tokens=NEW, **OFF)
        assert varied_tokens(plain) >= 10 and len({tuple(r) for r in plain}) > 1
        assert all(len(r) == NEW for r in plain)
        assert model.generate_ids(one, PROMPTS, max_new_tokens=NEW) == plain  # automatic reuse
        cache = model.prefix_cache(one)
        assert model.generate_ids(one, PROMPTS, max_new_tokens=NEW, prefix_cache=cache) == plain
        # one prompt at a time, through the same cache and without one
        for p, row in zip(PROMPTS, plain):
            assert model.generate_ids(one, p, max_new_tokens=NEW, prefix_cache=cache)[0] == row
            assert model.generate_ids(one, p, max_new_tokens=NEW, **OFF)[0] == row
        # in other batches: order, duplicates, subsets
        order = [5, 1, 1, 0, 3]
        assert model.generate_ids(one, [PROMPTS[j] for j in order], max_new_tokens=NEW, prefix_cache=cache) == [
            plain[j] for j in order]


def test_prompts_of_equal_length_need_no_padding(varied):
    model, mem = varied
    one = mem[1]
    prompts = ["Why?", "Who?", "How?"]
    lengths = {len(model.tokens.chat_pieces(p)[1]) for p in prompts}
    assert len(lengths) == 1
    plain = model.generate_ids(one, prompts, max_new_tokens=NEW, **OFF)
    assert model.generate_ids(one, prompts, max_new_tokens=NEW) == plain
    assert model.generate_ids(one, prompts, max_new_tokens=NEW, prefix_cache=model.prefix_cache(one)) == plain


def test_batches_over_several_memories(varied):
    """Rows of different memories (different slot counts): the cached prefixes are left-padded in the cache."""
    model, mem = varied
    cache = model.prefix_cache(mem)
    assert cache.prefix_passes == 1  # all four prefixes in one batched pass
    plain = model.generate_ids(mem, PROMPTS[:4], max_new_tokens=NEW, **OFF)
    assert model.generate_ids(mem, PROMPTS[:4], max_new_tokens=NEW, prefix_cache=cache) == plain
    rows = [3, 1, 1, 0, 2, 2, 0]
    sel = mem[rows]
    prompts = [PROMPTS[j % len(PROMPTS)] for j in range(len(rows))]
    plain = model.generate_ids(sel, prompts, max_new_tokens=NEW, **OFF)
    assert varied_tokens(plain) >= 10
    assert model.generate_ids(sel, prompts, max_new_tokens=NEW) == plain  # automatic: rows share entries
    assert model.generate_ids(sel, prompts, max_new_tokens=NEW, prefix_cache=cache) == plain
    assert cache.prefix_passes == 1


def test_rows_of_separate_memories_each_from_its_own_cache(varied):
    """``Memory.cat`` joins rows of separately compressed memories (``hicae serve`` batches them); with one cache
    per row, each row continues from (and a missing prefix is kept in) its own memory's cache; equal to uncached."""
    from hicae.memory import Memory

    model, mem = varied
    a, b = mem[[0, 1]], mem[[2, 3]]  # two memories (as two compress calls make)
    ca, cb = model.prefix_cache(a), model.prefix_cache(b, tasks=())  # b's prefixes: computed on first use
    rows = Memory.cat([a[[1, 0, 1]], b[[1]]])
    plain = model.generate_ids(rows, PROMPTS[:4], max_new_tokens=NEW, **OFF)
    assert varied_tokens(plain) >= 10
    assert model.generate_ids(rows, PROMPTS[:4], max_new_tokens=NEW, prefix_cache=[ca, ca, ca, cb]) == plain
    assert (ca.prefix_passes, cb.prefix_passes, len(cb.keys())) == (1, 1, 1)  # a reused; b computed its one row
    plain = model.reconstruct_ids(rows, max_new_tokens=NEW, **OFF)
    assert model.reconstruct_ids(rows, max_new_tokens=NEW, prefix_cache=[ca, ca, ca, cb]) == plain
    with pytest.raises(DataError, match="a list of 2 caches for 4 rows"):
        model.generate_ids(rows, PROMPTS[:4], max_new_tokens=NEW, prefix_cache=[ca, cb])
    other = Memory.cat([b])
    other.encoder_weights = "x" * 16
    with pytest.raises(DataError, match="different models, configs or weights"):
        Memory.cat([a, other])


def test_reconstruct_and_continue(varied):
    model, mem = varied
    cache = model.prefix_cache(mem, tasks=("ae", "lm"))
    assert cache.prefix_passes == 1 and len(cache.keys()) == len(mem)  # one [slots] prefix per entry, shared
    for fn in (model.reconstruct_ids, model.continue_ids):
        plain = fn(mem, max_new_tokens=NEW, **OFF)
        assert varied_tokens(plain) >= 10
        assert fn(mem, max_new_tokens=NEW, prefix_cache=cache) == plain
        assert fn(mem[[2, 2, 0]], max_new_tokens=NEW, prefix_cache=cache) == [plain[2], plain[2], plain[0]]
        assert fn(mem[[2, 2, 0]], max_new_tokens=NEW) == [plain[2], plain[2], plain[0]]  # automatic
    assert cache.prefix_passes == 1


def test_per_step_logits_match(varied):
    """Beyond the argmax: every step's logits agree with the uncached path (fp32)."""
    model, mem = varied
    sel = mem[[1, 1, 3, 0]]

    def logits(**kw):
        seen = []
        handle = model.decoder.lm_head.register_forward_hook(lambda m, i, o: seen.append(o[:, -1].clone()))
        try:
            model.generate_ids(sel, PROMPTS[:4], max_new_tokens=NEW, **kw)
        finally:
            handle.remove()
        return torch.stack(seen)  # [steps, B, V]

    plain, cached = logits(**OFF), logits(prefix_cache=model.prefix_cache(mem))
    assert plain.shape == cached.shape == (NEW, 4, plain.shape[-1])
    assert (plain - cached).abs().max().item() <= 1e-4 * plain.abs().max().item()


def test_sampling_through_the_cache(varied):
    """Sampling comes from generate() either way: same seed, same draws."""
    model, mem = varied
    one = mem[2]
    kw = dict(max_new_tokens=NEW, do_sample=True, temperature=0.8, top_k=50)
    torch.manual_seed(7)
    plain = model.generate_ids(one, PROMPTS, **kw, **OFF)
    torch.manual_seed(7)
    cached = model.generate_ids(one, PROMPTS, **kw)
    assert cached == plain


def test_hierarchical_memory(qwen3_tokenizer):
    torch.manual_seed(100)
    h = HierarchicalICAE(tiny_model("qwen3", seed=0, initializer_range=0.3), qwen3_tokenizer,
                         ICAEConfig(mem_size=2, compression_rate=2, lora_r=4, lora_dropout=0.0), HierarchyConfig(levels=3))
    perturb_trainable(h, seed=1)
    h.eval()
    mem = h.compress([" ".join(f"w{i % 13}" for i in range(40)), "short text"])
    cache = h.prefix_cache(mem, tasks=("ft", "ae"))
    sel = mem[[0, 0, 1]]
    assert h.generate_ids(sel, PROMPTS[:3], max_new_tokens=NEW, prefix_cache=cache) == \
        h.generate_ids(sel, PROMPTS[:3], max_new_tokens=NEW, **OFF)
    assert h.reconstruct_ids(mem, max_new_tokens=NEW, prefix_cache=cache) == h.reconstruct_ids(mem, max_new_tokens=NEW, **OFF)


# ---- the prefix runs once -----------------------------------------------------------------------------


def test_prefix_pass_runs_once(varied):
    model, _ = varied
    one = model.compress(" ".join(TEXTS))  # a long memory: its prefix is longer than any prompt part
    n = one.num_slots[0]
    p = chat_prefix_len(model, n)
    longest_rest = max(len(model.tokens.chat_pieces(q)[1]) for q in PROMPTS)
    assert p > longest_rest  # so a forward over the prefix is told apart from one over prompts
    passes = PrefixPasses(model)
    try:
        cache = model.prefix_cache(one)
        assert passes.shapes == [(1, p)] and cache.prefix_passes == 1 and cache.prefix_tokens == p
        passes.shapes.clear()
        for batch in (PROMPTS, PROMPTS[:2], PROMPTS[3:4]):
            model.generate_ids(one, batch, max_new_tokens=NEW, prefix_cache=cache)
        # three calls: each a prefill over its prompts only, then one-token steps
        assert passes.longer_than(longest_rest) == []
        rest = [max(len(model.tokens.chat_pieces(q)[1]) for q in b) for b in (PROMPTS, PROMPTS[:2], PROMPTS[3:4])]
        assert [s for s in passes.shapes if s[1] > 1] == [(6, rest[0]), (2, rest[1]), (1, rest[2])]
        assert cache.prefix_passes == 1

        # automatic reuse: n questions in one call cost one prefix pass (batch 1) and one batched prompt pass
        passes.shapes.clear()
        model.generate_ids(one, PROMPTS, max_new_tokens=NEW)
        assert passes.longer_than(longest_rest) == [(1, p)]
        # without the cache, every question recomputes the prefix
        passes.shapes.clear()
        model.generate_ids(one, PROMPTS, max_new_tokens=NEW, **OFF)
        assert passes.longer_than(longest_rest) == [(len(PROMPTS), p + longest_rest)]
    finally:
        passes.remove()


def test_prefix_pass_runs_once_for_reconstruct_and_continue(varied):
    model, mem = varied
    passes = PrefixPasses(model)
    try:
        cache = model.prefix_cache(mem[1], tasks=())
        assert passes.shapes == [] and len(cache.keys()) == 0
        model.reconstruct_ids(mem[1], max_new_tokens=NEW, prefix_cache=cache)  # computed on first use
        model.continue_ids(mem[1], max_new_tokens=NEW, prefix_cache=cache)  # reused: [slots] is shared
        model.reconstruct_ids(mem[1], max_new_tokens=NEW, prefix_cache=cache)
        n = mem.num_slots[1]
        assert [s for s in passes.shapes if s[1] > 1] == [(1, n)]  # the prefix; every other call feeds one [AE]/[LM]
        assert cache.prefix_passes == 1
    finally:
        passes.remove()


# ---- when the cache is not used -------------------------------------------------------------------------

# The system line quotes the length of the user message: the text before the memory depends on the prompt.
PROMPT_DEPENDENT = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>system\\nThe user wrote ' + (message['content']|length|string) + ' characters.<|im_end|>\\n' }}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_prompt_dependent_template_falls_back(make_icae, qwen3_tokenizer):
    tok = tokenizer_variant(qwen3_tokenizer, template=PROMPT_DEPENDENT)
    model = make_icae("qwen3", tokenizer=tok, **VARIED)
    mem = model.compress(TEXTS[:2])
    exs = [model.tokens.ft_example(mem.num_slots[0], q, None) for q in PROMPTS[:3]]
    assert chat_prefix_lengths(exs) is None
    cache = model.prefix_cache(mem[0])
    assert cache.keys() == []  # nothing cached for chat prompts
    plain = model.generate_ids(mem[0], PROMPTS[:3], max_new_tokens=NEW, **OFF)
    passes = PrefixPasses(model)
    try:
        assert model.generate_ids(mem[0], PROMPTS[:3], max_new_tokens=NEW) == plain  # automatic: silently uncached
        with pytest.warns(UserWarning, match="depends on the prompt"):
            assert model.generate_ids(mem[0], PROMPTS[:3], max_new_tokens=NEW, prefix_cache=cache) == plain
    finally:
        passes.remove()
    assert all(s[0] == 3 for s in passes.shapes)  # no separate prefix pass
    assert cache.prefix_passes == 0


@pytest.mark.parametrize("flavour", ["qwen2.5", "qwen3-base-eos"])
def test_other_templates(make_icae, tokenizers, flavour):
    """Qwen2.5's template (a default system prompt before the memory) and a base-EOS tokenizer."""
    model = make_icae("qwen2", tokenizer=tokenizers[flavour], **VARIED)
    mem = model.compress(TEXTS[:2])
    cache = model.prefix_cache(mem[1])
    assert len(cache.keys()) == 1
    plain = model.generate_ids(mem[1], PROMPTS, max_new_tokens=NEW, **OFF)
    assert model.generate_ids(mem[1], PROMPTS, max_new_tokens=NEW, prefix_cache=cache) == plain


def test_unsupported_generate_options(varied):
    model, mem = varied
    assert unsupported_reason(model, {}) is None
    assert unsupported_reason(model, {"num_beams": 2}) == "beam search"
    assert unsupported_reason(model, {"num_return_sequences": 2}) == "num_return_sequences > 1"
    assert unsupported_reason(model, {"use_cache": False}) == "use_cache=False"
    assert unsupported_reason(model, {"cache_implementation": "static"}) == "cache_implementation"
    cache = model.prefix_cache(mem[0])
    plain = model.generate_ids(mem[0], PROMPTS[:3], max_new_tokens=NEW, **OFF, use_cache=False)
    with pytest.warns(UserWarning, match="use_cache=False"):
        assert model.generate_ids(mem[0], PROMPTS[:3], max_new_tokens=NEW, prefix_cache=cache, use_cache=False) == plain


def test_sliding_window_models_are_not_cached(make_icae):
    model = make_icae("qwen3", base_overrides=dict(initializer_range=0.3, use_sliding_window=True, sliding_window=64,
                                                   max_window_layers=0))
    mem = model.compress(TEXTS[:1])
    cache = model.prefix_cache(mem)
    assert not cache.supported and cache.keys() == []
    plain = model.generate_ids(mem, PROMPTS[:3], max_new_tokens=NEW, **OFF)
    assert model.generate_ids(mem, PROMPTS[:3], max_new_tokens=NEW) == plain
    with pytest.warns(UserWarning, match="sliding"):
        assert model.generate_ids(mem, PROMPTS[:3], max_new_tokens=NEW, prefix_cache=cache) == plain


# ---- misuse and staleness ---------------------------------------------------------------------------------


def test_cache_belongs_to_its_memory_and_model(varied, make_icae):
    model, mem = varied
    cache = model.prefix_cache(mem[:2])
    with pytest.raises(DataError, match="not in the prefix cache"):
        model.generate_ids(mem[2], "Why?", prefix_cache=cache)
    other = make_icae(model.decoder.config.model_type, **VARIED)
    assert other.fingerprint == model.fingerprint  # the memory fits it, but the cache was built by the first model
    with pytest.raises(DataError, match="another model"):
        other.generate_ids(mem[0], "Why?", prefix_cache=cache)
    with pytest.raises(TypeError, match="PrefixCache"):
        model.generate_ids(mem[0], "Why?", prefix_cache="yes")
    # a copy of the memory (same slots, other tensors) finds its entries by value
    copy = mem[:2].to(dtype=torch.float32)
    copy.slots = [s.clone() for s in copy.slots]
    assert cache.entries_of(copy) == [0, 1]
    assert model.generate_ids(copy, PROMPTS[:2], max_new_tokens=NEW, prefix_cache=cache) == \
        model.generate_ids(mem[:2], PROMPTS[:2], max_new_tokens=NEW, **OFF)


def test_cache_is_emptied_when_the_model_changes(varied):
    model, mem = varied
    one = mem[0]
    cache = model.prefix_cache(one)
    before = model.generate_ids(one, PROMPTS, max_new_tokens=NEW, prefix_cache=cache)
    with torch.no_grad():
        model.task_embeddings.add_(0.5)  # as training would
    model.allow_other_weights = True  # the memory is now another encoder's: decode it knowingly
    after_plain = model.generate_ids(one, PROMPTS, max_new_tokens=NEW, **OFF)
    assert after_plain != before
    assert model.generate_ids(one, PROMPTS, max_new_tokens=NEW, prefix_cache=cache) == after_plain
    assert cache.prefix_passes == 2


def test_layout_helpers(varied):
    model, mem = varied
    exs = [model.tokens.ft_example(n, q, None) for n, q in zip(mem.num_slots, PROMPTS)]
    lens = chat_prefix_lengths(exs)
    for ex, n, p in zip(exs, mem.num_slots, lens):
        assert ex.ids[p - 1] == FT and ex.ids[p - 1 - n : p - 1] == [SLOT] * n and SLOT not in ex.ids[p:]
    assert isinstance(model.prefix_cache(mem[0]), PrefixCache)
    with pytest.raises(DataError, match="unknown tasks"):
        model.prefix_cache(mem, tasks=("qa",))
