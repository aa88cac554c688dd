"""BOS as ICAE v2 puts it, on a tiny Mistral whose tokenizer adds ``<s>`` the way Mistral's does.

The reference (getao/icae code/icae_v2) tokenises texts with ``model.tokenizer(text)``, i.e. with the
tokenizer's default special tokens: on Mistral every compressed text starts with ``<s>`` (id 1).
Its computations are written out below as its scripts do them, on the very weights of the hicae
model under test (``memory_token_embed`` = hicae's memory rows then ``[AE] [LM] [FT]``; the encoder
is the LoRA-wrapped model, the decoder the same weights without the adapter):

- ``_compress`` / ``forward`` (modeling_icae_multi_span.py): ``n = ceil(L / (k r))`` segments of
  ``ceil(L / n)`` tokens of ``tokenizer(text)`` (BOS counted in L), each + k memory ids;
- ``pretrain_tokenize_function`` (training_utils.py): AE ``[mem]*nk [AE] a EOS`` with loss on
  ``a EOS`` (``a`` holding the BOS); LM cut ``a = ids[:r+1]``, ``b = ids[r+1:]``;
- ``instruct_ft_tokenize_function``: ``input`` tokenised *without* special tokens, decoder
  ``[1, 733, 16289, 28793] [mem]*nk [FT] prompt [733, 28748, 16289, 28793] answer EOS``;
- ``fine_tuned_inference.py``: ``input`` tokenised *with* BOS, the same ``[INST]`` layout, greedy
  decoding over the first V logits until EOS.

Mistral's hard-coded ``733, 16289, 28793`` are ``"▁[", "INST", "]"`` (SentencePiece's ``"[INST]"``),
``733, 28748, 16289, 28793`` are ``"[/INST]"``; the tiny tokenizer's own ids of those strings stand in.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaTokenizer

from hicae import ICAEConfig
from hicae.training.data import Collator
from hicae.errors import ConfigError
from hicae.layout import FT, SLOT
from hicae.tokens import SpecialTokens, bos_prefix

from conftest import build_icae

# Mistral-7B-Instruct-v0.1/v0.2's chat template (tokenizer_config.json).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'[]/-:"
BOS, EOS = 1, 2
TEXTS = ["Tiny Mistral reads this line of text.", "abcdefghijklmno", "Hi."]  # 38+1, 16+1, 4+1 tokens
RECORDS = [{"input": TEXTS[0], "prompt": "What reads?", "answer": "Mistral."},
           {"input": TEXTS[1], "prompt": "Letters?", "answer": "Yes"}]


def mistral_like_tokenizer() -> LlamaTokenizer:
    """A SentencePiece-style tokenizer as transformers builds Mistral's (LlamaTokenizer, ``legacy``
    Metaspace, BOS added by default): one token per character, and ``"▁["`` merged as in Mistral."""
    vocab = {"<unk>": 0, "<s>": BOS, "</s>": EOS, "▁": 3, **{c: 4 + i for i, c in enumerate(CHARS)}}
    vocab["▁["] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[("▁", "[")], legacy=True, add_bos_token=True,
                          chat_template=MISTRAL_TEMPLATE)


@pytest.fixture(scope="module")
def tok() -> LlamaTokenizer:
    return mistral_like_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    over = dict(vocab_size=len(tok), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None)
    return build_icae(tok, "mistral", base_overrides=over).model


class Reference:
    """ICAE v2's computations on ``model``'s weights, in the reference's id space: memory ids
    ``V+1 .. V+k`` (``V+1``: the reference's vocab_size, [PAD] added), then ``[AE] [LM] [FT]``."""

    def __init__(self, model):
        self.m = model
        cfg = model.icae_config
        self.k, self.r = cfg.mem_size, cfg.compression_rate
        self.V = model.base_config.vocab_size
        self.vocab_size = self.V + 1
        self.mem = list(range(self.vocab_size, self.vocab_size + self.k))
        self.ae, self.lm, self.ft = (self.vocab_size + self.k + i for i in range(3))
        self.memory_token_embed = torch.cat([model.mem_embeddings, model.task_embeddings]).detach()  # [k+3, D]

    def embed(self, ids: list[int]) -> torch.Tensor:  # tokens_to_embeddings: [1, T, D]
        x = torch.tensor([ids])
        flag = x >= self.vocab_size
        e = self.m.decoder.get_input_embeddings()(x.masked_fill(flag, 0))
        e[flag] = self.memory_token_embed[x[flag] - self.vocab_size]
        return e

    def compress(self, ids: list[int]) -> torch.Tensor:  # _compress: [n*k, D]
        L = len(ids)
        n = math.ceil(L / (self.k * self.r))
        seg = math.ceil(L / n)
        out = []
        for i in range(n):
            x = ids[i * seg : min((i + 1) * seg, L)] + self.mem
            h = self.m.encoder(inputs_embeds=self.embed(x), output_hidden_states=True).hidden_states[-1][0]
            out.append(h[len(x) - self.k :])
        return torch.cat(out)

    def decoder_logits(self, prompt_answer_ids: list[int], slots: torch.Tensor) -> torch.Tensor:  # forward's decoder
        e = self.embed(prompt_answer_ids)
        e[0, torch.tensor(prompt_answer_ids) == self.mem[0]] = slots
        return self.m.decoder(inputs_embeds=e).logits[0]  # [T, V]

    def token_losses(self, input_ids: list[int], prompt_answer_ids: list[int], labels: list[int]) -> torch.Tensor:
        logits = self.decoder_logits(prompt_answer_ids, self.compress(input_ids))
        y = torch.tensor(labels[1:])
        return F.cross_entropy(logits[:-1][y != -100], y[y != -100], reduction="none")

    def num_mem(self, a: list[int]) -> int:
        return math.ceil(len(a) / (self.k * self.r)) * self.k

    def pretrain_example(self, a: list[int], b: list[int], lm: bool, cfg: ICAEConfig):  # pretrain_tokenize_function
        if not lm:
            prompt, answer = [self.mem[0]] * self.num_mem(a) + [self.ae], a + [EOS]
            return a, prompt + answer, [-100] * len(prompt) + answer
        prompt = [self.mem[0]] * self.num_mem(a) + ([self.lm] if cfg.add_special_token_for_lm else [])
        leave = cfg.leave_tokens_for_lm
        return a, prompt + b, [-100] * (len(prompt) + leave) + b[leave:]

    def inst_ids(self, tok) -> tuple[list[int], list[int]]:  # Mistral's [1, 733, 16289, 28793] and [/INST]
        ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return [BOS] + ids("[INST]"), ids("[/INST]")

    def ft_prompt(self, tok, num_mem: int, prompt: str) -> list[int]:
        left, right = self.inst_ids(tok)
        return left + [self.mem[0]] * num_mem + [self.ft] + tok(prompt, add_special_tokens=False)["input_ids"] + right


@pytest.fixture(scope="module")
def ref(model):
    return Reference(model)


def test_bos_prefix_follows_the_tokenizer(tok, qwen3_tokenizer):
    assert tok("Hi.")["input_ids"][0] == BOS  # the tokenizer adds <s> by default, as Mistral's does
    assert bos_prefix(tok, "auto") == bos_prefix(tok, "always") == [BOS] and bos_prefix(tok, "never") == []
    assert bos_prefix(qwen3_tokenizer, "auto") == bos_prefix(qwen3_tokenizer, "never") == []  # Qwen: no BOS
    with pytest.raises(ConfigError, match="no BOS token"):
        bos_prefix(qwen3_tokenizer, "always")
    with pytest.raises(ConfigError, match="bos must be one of"):
        ICAEConfig(bos="sometimes")
    st = SpecialTokens.from_tokenizer(tok)
    assert st.text_ids(TEXTS) == [tok(t)["input_ids"] for t in TEXTS]  # exactly the reference's tokenizer(text)


def test_compression_of_multi_span_texts_equals_the_reference(model, ref, tok):
    mem = model.compress(TEXTS)
    for text, slots in zip(TEXTS, mem.slots):
        with torch.no_grad():
            want = ref.compress(tok(text)["input_ids"])
        assert slots.shape == want.shape
        torch.testing.assert_close(slots, want, rtol=1e-5, atol=1e-5)
    # BOS counts in the segment rule: 16 letters + <s> = 17 tokens make 3 segments of 6, not 2 of 8
    assert mem.num_slots[1] == 3 * ref.k and mem.num_tokens[1] == 17
    assert model.fingerprint != build_icae(tok, "mistral", bos="never", base_overrides=dict(
        vocab_size=len(tok), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None)).model.fingerprint


@pytest.mark.parametrize("lm", [False, True], ids=["ae", "lm"])
def test_pretraining_loss_equals_the_reference(model, ref, tok, lm):
    """AE: the target is ``<s> text EOS``; LM (the reference's uniform cut, no [LM]): the head holds ``<s>``."""
    cfg = dataclasses.replace(model.icae_config, lm_cut="uniform", add_special_token_for_lm=False,
                              min_tokens_for_lm=4, leave_tokens_for_lm=2)
    col = Collator(tok, model.tokens, cfg, "pretrain", lm_ratio=1.0 if lm else 0.0, seed=3)
    records = [{"text": t, "index": i} for i, t in enumerate(TEXTS)]
    want, tasks = [], []
    for r in records:
        ids = tok(r["text"])["input_ids"]
        task, ctx, tgt = col.split(ids, r["index"]) if lm else ("ae", ids, ids)
        tasks.append(task)
        s = len(ctx)  # the reference's r + 1: a = ids[:r+1], b = ids[r+1:]
        a, b = ids[:s], ids[s:]
        assert ctx == a and a[0] == BOS
        with torch.no_grad():
            want.append(ref.token_losses(*ref.pretrain_example(a, b, task == "lm", cfg)))
    if lm:
        assert "lm" in tasks and "ae" in tasks  # both of the reference's branches (a short tail: AE of the head)
    with torch.no_grad():
        got = model(**col(records))["loss"]
    torch.testing.assert_close(got, torch.cat(want).mean(), rtol=1e-5, atol=1e-6)


def test_fine_tuned_inference_layout_and_decoding_equal_the_reference(model, ref, tok):
    """fine_tuned_inference.py: ``<s>`` before the compressed input, and ``<s> [INST]`` before the slots."""
    r = RECORDS[0]
    mem = model.compress(r["input"])
    n = mem.num_slots[0]
    ex = model.tokens.ft_example(n, r["prompt"], None)
    left, right = ref.inst_ids(tok)
    assert ex.ids == left + [SLOT] * n + [FT] + tok(r["prompt"], add_special_tokens=False)["input_ids"] + right
    got = model.generate_ids(mem, r["prompt"], max_new_tokens=6)[0]
    with torch.no_grad():
        slots = ref.compress(tok(r["input"])["input_ids"])
        seq, want = ref.ft_prompt(tok, n, r["prompt"]), []
        for _ in range(6):
            nxt = int(ref.decoder_logits(seq, slots)[-1, : ref.V].argmax())
            if nxt == EOS:
                break
            seq, want = seq + [nxt], want + [nxt]
    assert got == want and len(want) >= 3  # decoded past the first tokens


def test_fine_tuning_loss_with_bos_never_equals_the_reference_script(model, ref, tok):
    """instruct_ft_tokenize_function compresses ``input`` without special tokens: ``bos='never'``."""
    tokens = SpecialTokens.from_tokenizer(tok, model.base_config, bos="never")
    col = Collator(tok, tokens, model.icae_config, "finetune")
    want = []
    with torch.no_grad():
        for r in RECORDS:
            ids = tok(r["input"], add_special_tokens=False)["input_ids"]
            prompt = ref.ft_prompt(tok, ref.num_mem(ids), r["prompt"])
            answer = tok(r["answer"], add_special_tokens=False)["input_ids"] + [EOS]
            want.append(ref.token_losses(ids, prompt + answer, [-100] * len(prompt) + answer))
        got = model(**col(RECORDS))["loss"]
    torch.testing.assert_close(got, torch.cat(want).mean(), rtol=1e-5, atol=1e-6)


def test_a_tokenizer_without_bos_needs_no_probe_call():
    from hicae.tokens import bos_prefix

    class Minimal:  # no bos_token_id, not callable: benchmarks' stub tokenizer
        pass

    assert bos_prefix(Minimal(), "auto") == [] and bos_prefix(Minimal(), "never") == []
