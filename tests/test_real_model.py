"""ICAE on the real Qwen2.5-0.5B-Instruct (fetched by scripts/setup.sh; ``hicae.demo.real_model``).

Marked ``real``: excluded from the default run, run by CI (``pytest -m real``). They skip only when
the model has not been fetched, and say so. One fp32 model (2 GB) serves the module.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hicae import HierarchicalICAE, HierarchyConfig, ICAE, ICAEConfig, Memory
from hicae.errors import CheckpointError, HicaeError
from hicae.layout import FT, SLOT

from conftest import Example, build_batch, perturb_trainable

pytestmark = pytest.mark.real

CFG = dict(mem_size=8, compression_rate=4, lora_r=8, lora_alpha=16, lora_dropout=0.0,
           lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
# The shipped demo adapter reconstructs the English demo passage at least this well (measured: see
# src/hicae/demo/checkpoint/TRAINING.md; greedy bf16 decoding is deterministic on one machine).
DEMO_MIN_BLEU_EN = 60.0  # measured 94.4 (pick2_rehearsed; pick1_rehearsed and curriculum_freeform256 100.0; earlier adapters 78.7, 81.8; the paper's method: 8.1)
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "hicae compresses long contexts into a small number of memory slots that a frozen model reads.",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Python's standard library is very extensive, offering a wide range of facilities. " * 3,
]


@pytest.fixture(scope="module")
def real_path():
    from hicae.demo.real_model import qwen25_path

    try:
        return qwen25_path(fetch=False)
    except HicaeError as e:
        pytest.skip(f"real Qwen2.5 not fetched: {e}")


@pytest.fixture(scope="module")
def base_bf16(real_path):
    from hicae.io.checkpoint import load_base

    return load_base(str(real_path), dtype="bf16")


@pytest.fixture(scope="module")
def icae32(base_bf16):
    """fp32 ICAE on a copy of the real base, with a perturbed (non-trivial) adapter."""
    base, tok = base_bf16
    torch.manual_seed(0)
    model = ICAE(copy.deepcopy(base).float(), tok, ICAEConfig(**CFG))
    perturb_trainable(model, seed=1, scale=0.02)
    return model.eval()


def test_real_tokenizer_and_stop_ids(icae32):
    tok, st = icae32.tokenizer, icae32.tokens
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.bos_token is None or not tok("x")["input_ids"][0] == tok.bos_token_id  # Qwen has no BOS
    assert im_end == st.chat_end_id and im_end in st.stop_ids
    assert tok.convert_tokens_to_ids("<|endoftext|>") in st.stop_ids


@pytest.mark.parametrize("prompt,answer", [("What is the text about?", "A fox."), ("总结一下。", "一首诗。")])
def test_chat_layout_is_the_qwen25_template_with_slots(icae32, prompt, answer):
    tok, st = icae32.tokenizer, icae32.tokens
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    ex = st.ft_example(8, prompt, answer_ids)
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    before, _ = st.chat_pieces(prompt)
    n = len(before)
    assert tok.decode(before).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert tok.decode(before).endswith("<|im_start|>user\n")
    assert ex.ids[n : n + 8] == [SLOT] * 8 and ex.ids[n + 8] == FT
    plain = [i for i in ex.ids if i >= 0]
    assert plain == full[: len(plain)] and plain[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(full[len(plain) :]) == "\n"


def test_generation_stops_on_im_end(base_bf16):
    """The base model answers a chat question and stops on <|im_end|> (as the chat template ends a turn)."""
    base, tok = base_bf16
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = base.generate(**enc, max_new_tokens=8, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert tok.decode(new[:-1]).strip() == "Paris" and new[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_icae_generation_stops_at_a_stop_id(icae32):
    mem = icae32.compress(TEXTS[:2])
    rows = icae32.generate_ids(mem, ["Say hello.", "Say hello."], max_new_tokens=40)
    stop = set(icae32.tokens.stop_ids)
    assert icae32.tokens.chat_end_id == icae32.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(not stop & set(r) for r in rows)  # rows are cut before their stop id
    assert any(len(r) < 40 for r in rows)  # the model ended its turn (here: "Hello! How can I ...")


def test_batched_compression_equals_one_at_a_time_fp32(icae32):
    with torch.no_grad():
        batched = icae32.compress(TEXTS)
        for i, t in enumerate(TEXTS):
            one = icae32.compress(t)
            assert batched.num_segments[i] == one.num_segments[0]
            torch.testing.assert_close(batched.slots[i], one.slots[0], atol=1e-5, rtol=1e-5)


def test_batched_compression_bf16_within_rounding(base_bf16, icae32):
    base, tok = base_bf16
    torch.manual_seed(0)
    m16 = ICAE(copy.deepcopy(base), tok, ICAEConfig(**CFG))
    m16.load_state_dict(icae32.state_dict(), strict=False)
    m16.eval()
    with torch.no_grad():
        batched = m16.compress(TEXTS)
        ref = icae32.compress(TEXTS)
        for i, t in enumerate(TEXTS):
            one = m16.compress(t).slots[0].float()
            a, r = batched.slots[i].float(), ref.slots[i]
            # Batched vs single in bf16 differ by rounding only: no more than bf16 itself differs
            # from fp32 (padding and batch shape change the kernels' summation order, and 24 layers
            # of 8-bit mantissas carry that forward).
            d_batch, d_bf16 = (a - one).abs().mean(), (one - r).abs().mean()
            print(f"text {i}: |batched-single| {d_batch:.4f}, |single-fp32| {d_bf16:.4f}, |fp32| {r.abs().mean():.3f}")
            assert d_batch <= 1.5 * d_bf16
            assert d_bf16 < 0.1 * r.abs().mean()


def test_prefix_cache_equals_uncached(icae32):
    mem = icae32.compress(TEXTS[1])
    prompts = ["What is this about?", "Summarise it in five words.", "Who reads the slots?"]
    plain = icae32.generate_ids(mem, prompts, max_new_tokens=12, prefix_cache=False)
    cache = icae32.prefix_cache(mem)
    assert icae32.generate_ids(mem, prompts, max_new_tokens=12, prefix_cache=cache) == plain
    assert icae32.generate_ids(mem, prompts, max_new_tokens=12) == plain  # automatic reuse
    rec = icae32.reconstruct_ids(mem, max_new_tokens=12, prefix_cache=False)
    assert icae32.reconstruct_ids(mem, max_new_tokens=12, prefix_cache=icae32.prefix_cache(mem, tasks=("ae",))) == rec


def test_hierarchical_append_equals_whole(base_bf16, icae32):
    base, tok = base_bf16
    torch.manual_seed(0)
    h = HierarchicalICAE(copy.deepcopy(base).float(), tok, ICAEConfig(**{**CFG, "mem_size": 4, "compression_rate": 2}),
                         HierarchyConfig(levels=3, group_size=2, max_slots=16))
    perturb_trainable(h, seed=2, scale=0.02)
    h.eval()
    full = tok(TEXTS[4], add_special_tokens=False)["input_ids"][:45]
    with torch.no_grad():
        whole = h.compress_ids([full])
        for cut in (8, 13, 30):
            part = h.append_ids(h.compress_ids([full[:cut]]), [full[cut:]])
            assert part.blocks == whole.blocks and part.num_tokens == whole.num_tokens
            for a, b in zip(part.slots, whole.slots):
                # equal up to fp32 rounding carried through 24 layers and two levels (hidden states of
                # this model reach |x| ~ 80; compressing the text batched beside another text moves
                # them as much: max ~5e-4 there, ~9e-4 here, measured)
                d = (a - b).abs()
                assert d.max() <= 1e-4 * b.abs().max() and d.mean() <= 1e-4 * b.abs().mean(), (cut, d.max(), d.mean())
    assert whole.levels >= 2 and whole.num_slots[0] <= 16


def test_real_memory_is_refused_by_the_tiny_model(icae32, make_icae, tmp_path):
    mem = icae32.compress(TEXTS[0])
    mem.save(tmp_path / "real.mem.safetensors")
    tiny = make_icae("qwen2")
    loaded = Memory.load(tmp_path / "real.mem.safetensors")
    with pytest.raises(CheckpointError, match="another model"):
        tiny.generate(loaded, "What is it?")
    assert icae32.generate_ids(loaded, "What is it?", max_new_tokens=3)  # its own model reads it


def test_training_steps_lower_the_ae_loss(base_bf16):
    """30 AdamW steps of AE on four texts, on the real base in bf16: the AE loss falls by over 75%."""
    base, tok = base_bf16
    torch.manual_seed(0)
    model = ICAE(copy.deepcopy(base), tok, ICAEConfig(**CFG))
    texts = [tok(t, add_special_tokens=False)["input_ids"][:32] for t in TEXTS[:4]]
    batch = build_batch(model, [Example("ae", t) for t in texts])
    model.train()
    opt = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=2e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = model(**batch)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    model.eval()
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"real Qwen2.5 AE loss: first {losses[0]:.3f}, last {losses[-1]:.3f}; means {first:.3f} -> {last:.3f}")
    assert last < 0.25 * first


def test_load_base_reads_the_gguf_file(real_path):
    """``load_base`` on the .gguf gives the weights that setup converted (dequantized to bf16)."""
    from hicae.io.checkpoint import load_base
    from hicae.demo.real_model import qwen25_gguf_path

    try:
        gguf = qwen25_gguf_path(fetch=False)
    except HicaeError as e:
        pytest.skip(str(e))
    model, tok = load_base(str(gguf))
    ref, ref_tok = load_base(str(real_path), dtype="bf16")
    assert model.dtype == torch.bfloat16 and type(model.config) is type(ref.config)
    sd, rsd = model.state_dict(), ref.state_dict()
    assert sd.keys() == rsd.keys()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.23.mlp.down_proj.weight"):
        assert torch.equal(sd[name], rsd[name]), name
    assert tok("床前明月光 hello")["input_ids"] == ref_tok("床前明月光 hello")["input_ids"]


def test_hicae_demo_on_real_weights(real_path, tmp_path, capsys):
    """README's first command: the shipped adapter on the real model reconstructs held-out passages."""
    import re

    from hicae.cli.main import main

    capsys.readouterr()
    assert main(["demo", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    bleus = [float(b) for b in re.findall(r"BLEU-4 of the reconstruction ([\d.]+)", out)]
    print(out)
    assert len(bleus) == 3 and "from memory (16 slots" in out and "from the full text (" in out
    assert bleus[0] >= DEMO_MIN_BLEU_EN, bleus
    # the long-document part: one document compressed once, three questions from memory, full text and BM25
    from hicae.cli.demo_long import LONG_DOCUMENT

    if LONG_DOCUMENT.is_file():
        assert out.count("  Q: ") == 3 and "compressed once in" in out and "right out of 3: memory" in out
        assert out.count(" memory     ") == 3 and out.count(" BM25       ") == 3
