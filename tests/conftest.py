"""Shared fixtures: the real Qwen3 tokenizer, tiny random ICAE models, hand-built training batches."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from hicae import ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.batching import pad_decoder, pad_encoder
from hicae.layout import encoder_rows
from hicae.tasks import TASKS
from hicae.demo.tiny import tiny_model

# Tiny models gain nothing from intra-op threads, and on a small shared machine OpenMP threads that
# spin-wait for a busy core slow every op down by up to 10x. One thread keeps timings steady.
torch.set_num_threads(int(os.environ.get("HICAE_TEST_THREADS", "1")))

ARCHS = ("qwen2", "qwen3")

# Settings of every tiny ICAE in the suite: segments of at most k*r = 8 tokens.
TINY_ICAE = dict(mem_size=4, compression_rate=2, lora_r=4, lora_dropout=0.0)


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer (cached offline). Tests must not mutate it: copy it first."""
    return load_qwen3_tokenizer()


# Qwen2.5's chat format (what its tokenizer_config.json renders when no tools are given), written here.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tokenizer_variant(base: Any, template: str | None = None, eos: str | None = None) -> Any:
    """A copy of ``base`` with another chat template and/or EOS token."""
    tok = copy.deepcopy(base)
    if template is not None:
        tok.chat_template = template
    if eos is not None:
        tok.eos_token = eos
    return tok


@pytest.fixture(scope="session")
def tokenizers(qwen3_tokenizer) -> dict[str, Any]:
    """Tokenizer flavours (copies made once; do not mutate them):

    - ``qwen3``: the real Qwen3 tokenizer (EOS <|im_end|>, Qwen3 template with thinking tags);
    - ``qwen3-base-eos``: the same with EOS <|endoftext|> (a base model's tokenizer);
    - ``qwen2.5``: Qwen2.5-Instruct style: Qwen2.5's template (default system prompt), EOS <|im_end|>;
    - ``qwen2.5-base-eos``: Qwen2.5 base style: that template, EOS <|endoftext|>.
    """
    return {
        "qwen3": qwen3_tokenizer,
        "qwen3-base-eos": tokenizer_variant(qwen3_tokenizer, eos="<|endoftext|>"),
        "qwen2.5": tokenizer_variant(qwen3_tokenizer, template=QWEN25_TEMPLATE),
        "qwen2.5-base-eos": tokenizer_variant(qwen3_tokenizer, template=QWEN25_TEMPLATE, eos="<|endoftext|>"),
    }


def perturb_trainable(model: ICAE, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded noise to every trainable tensor, in name order (LoRA B starts at zero: a no-op adapter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.trainable_parameters().items()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.add_((noise * scale).to(p.dtype))


@dataclass
class Built:
    model: ICAE
    base: torch.nn.Module  # the base model object wrapped by the ICAE (now holding LoRA layers)
    pristine: torch.nn.Module  # a deep copy of the base model taken before wrapping


def build_icae(
    tokenizer: Any,
    arch: str = "qwen3",
    *,
    seed: int = 0,
    perturb: bool = True,
    share_decoder: bool = True,
    keep_pristine: bool = False,
    base_overrides: dict | None = None,
    **config_overrides: Any,
) -> Built:
    base = tiny_model(arch, seed=seed, dtype=torch.float32, **(base_overrides or {}))
    pristine = copy.deepcopy(base) if keep_pristine else None
    cfg = ICAEConfig(**{**TINY_ICAE, **config_overrides})
    torch.manual_seed(seed + 100)  # LoRA A's initialisation draws from the global generator
    model = ICAE(base, tokenizer, cfg, share_decoder=share_decoder)
    if perturb:
        perturb_trainable(model, seed=seed + 1)
    model.eval()
    return Built(model, base, pristine)


@pytest.fixture
def make_icae(qwen3_tokenizer) -> Callable[..., ICAE]:
    """Factory: ``make_icae("qwen2", **ICAEConfig overrides)`` -> a tiny fp32 ICAE with a perturbed adapter."""

    def make(arch: str = "qwen3", *, tokenizer: Any = None, **kw: Any) -> ICAE:
        return build_icae(tokenizer or qwen3_tokenizer, arch, **kw).model

    return make


@pytest.fixture
def make_built(qwen3_tokenizer) -> Callable[..., Built]:
    """Like ``make_icae`` but also returns the wrapped base model and, on request, its pristine copy."""

    def make(arch: str = "qwen3", *, tokenizer: Any = None, **kw: Any) -> Built:
        return build_icae(tokenizer or qwen3_tokenizer, arch, **kw)

    return make


# ---- training batches, built by hand from the layout functions (independent of hicae.training.data) ----------


@dataclass
class Example:
    """One training example: ``context`` is compressed; the decoder target depends on ``task``."""

    task: str  # "ae" | "lm" | "ft"
    context: list[int]
    continuation: list[int] | None = None  # lm
    prompt: str | None = None  # ft
    answer: list[int] | None = None  # ft


def build_batch(model: ICAE, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Keyword arguments of ``ICAE.forward`` for a mixed batch of AE / LM / FT examples."""
    cfg = model.icae_config
    rows = encoder_rows([e.context for e in examples], cfg.mem_size, cfg.compression_rate)
    enc = pad_encoder(rows, model.tokens.pad_id)
    dec_examples = []
    for e, nseg in zip(examples, rows.segments_per_text):
        n = nseg * cfg.mem_size
        if e.task == "ae":
            dec_examples.append(model.ae_example(n, e.context))
        elif e.task == "lm":
            dec_examples.append(model.lm_example(n, e.continuation))
        elif e.task == "ft":
            dec_examples.append(model.tokens.ft_example(n, e.prompt, e.answer))
        else:
            raise ValueError(e.task)
    dec = pad_decoder(dec_examples, model.tokens.pad_id, side="right")
    return {
        "enc_ids": enc.ids,
        "enc_seg_lens": enc.seg_lens,
        "dec_ids": dec.ids,
        "dec_labels": dec.labels,
        "dec_mask": dec.attention_mask,
        "task": torch.tensor([TASKS.index(e.task) for e in examples], dtype=torch.long),
        "segments_per_example": torch.tensor(rows.segments_per_text, dtype=torch.long),
    }


TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Compression of long contexts lets a frozen language model read more.",
    "Qwen has no BOS token.",
    "Memory slots are hidden states after the final norm, one set per segment of text.",
]


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def mixed_examples(tokenizer: Any) -> list[Example]:
    """AE, LM and FT examples of different lengths (several segments, padding on both sides)."""
    t = [ids_of(tokenizer, s) for s in TEXTS]
    long_cont = ids_of(tokenizer, " and then it ran further into the deep green forest, where nobody had ever been before")
    return [
        Example("ae", t[0]),
        Example("lm", t[1], continuation=long_cont),
        Example("ft", t[3], prompt="What are memory slots?", answer=ids_of(tokenizer, "Hidden states.")),
        Example("ae", t[2]),
    ]


# ---- greedy decoding by hand, and a base whose generation_config would change it -------------------------

# What Qwen2.5-Instruct's generation_config.json sets (repetition_penalty 1.05-1.1), made strong enough to
# change a tiny model's output, and a no_repeat_ngram_size as other bases set it.
PENALTIES = dict(repetition_penalty=1.8, no_repeat_ngram_size=2, temperature=0.7, top_p=0.8, top_k=20)


def penalised(model):
    """``model`` with its base's generation config set as a Qwen2.5-Instruct's (mutates the shared config)."""
    for k, v in PENALTIES.items():
        setattr(model.decoder.generation_config, k, v)
    return model


def argmax_loop(model, embeds: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding written by hand: no cache, no processors.  embeds: [1, T, D] -> new ids up to a stop id."""
    emb, out = model.decoder.get_input_embeddings(), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model.decoder(inputs_embeds=embeds, use_cache=False).logits[0, -1].argmax())
            if t in model.tokens.stop_ids:
                break
            out.append(t)
            embeds = torch.cat([embeds, emb(torch.tensor([[t]]))], dim=1)
    return out


def memory_argmax(model, mem, task: str, prompt: str | None = None, n: int = 8) -> list[int]:
    """``argmax_loop`` from a one-entry memory's decoder layout (``task``: ae, lm or ft with ``prompt``)."""
    rows, (ex,) = model.decoder_examples(mem, task, [prompt] if prompt else None)
    with torch.no_grad():
        embeds = model.decoder_inputs(torch.tensor([ex.ids]), torch.cat(list(rows.slots)))
    return argmax_loop(model, embeds, n)


def placed_argmax_loop(model, mem, layout: list[int], steps: int) -> list[int]:
    """Greedy decoding by hand from a one-entry memory: the whole sequence again at every step, positions
    from the layout rule of the model's placements (``decoder_positions='follow'``)."""
    out: list[int] = []
    slots = mem.slots[0].to(model.device)
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([layout + out])
            pos = torch.tensor([model.example_positions(layout + out, model.placements(mem)[0])])
            h = model.decoder.model(inputs_embeds=model.decoder_inputs(ids, slots), position_ids=pos,
                                    attention_mask=torch.ones_like(ids)).last_hidden_state
            out.append(int(model.decoder.get_output_embeddings()(h[0, -1]).argmax()))
            if out[-1] in model.tokens.stop_ids:
                break
    return out


def check_batched_cached_static(model, mem, prompts: list[str] | None = None, row: int = 0) -> None:
    """Decoding ``mem`` batched, with a prefix cache and with static decoding equals decoding each entry alone
    (reconstruct and continue; with ``prompts``, questions about entry ``row`` too). Leaves decoding static."""
    one = [model.reconstruct_ids(mem[i], 8, prefix_cache=False)[0] for i in range(len(mem))]
    assert model.reconstruct_ids(mem, 8, prefix_cache=False) == one
    cache = model.prefix_cache(mem, tasks=("ae", "lm", "ft"))
    assert model.reconstruct_ids(mem, 8, prefix_cache=cache) == one
    cont = [model.continue_ids(mem[i], 8, prefix_cache=False)[0] for i in range(len(mem))]
    assert model.continue_ids(mem, 8, prefix_cache=cache) == cont
    if prompts:
        ans = model.generate_ids(mem[row], prompts, 8, prefix_cache=False)
        assert model.generate_ids(mem[row], prompts, 8, prefix_cache=cache) == ans
        assert [model.generate_ids(mem[row], p, 8, prefix_cache=False)[0] for p in prompts] == ans
    model.set_decoding("static", bucket=32)
    assert model.reconstruct_ids(mem, 8, prefix_cache=False) == one
    if prompts:
        assert model.generate_ids(mem[row], prompts, 8, prefix_cache=cache) == ans
