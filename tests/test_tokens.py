"""Special tokens and chat layout come from the tokenizer: real Qwen3 template and a Qwen2.5-style one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hicae
from hicae import ConfigError
from hicae.layout import FT, IGNORE, SLOT
from hicae.tokens import PLACEHOLDER, SpecialTokens, tokenize

from conftest import QWEN25_TEMPLATE, tokenizer_variant

PROMPTS = [
    "What is the capital of France?",
    "Summarise the text.",
    "这段文字讲的是什么？",
    "List three facts, one per line:\n1.",
    "Why",
]
ANSWERS = ["Paris.", "A fox jumps over a dog.", "关于狐狸。", "42 is the answer\nand more.", "Because"]


def qwen25(tokenizers, base_eos: bool = False):
    return tokenizers["qwen2.5-base-eos" if base_eos else "qwen2.5"]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_qwen25_template_renders_like_qwen25(tokenizers):
    tok = qwen25(tokenizers)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        tokenize=False,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"


def test_special_tokens_of_qwen3(qwen3_tokenizer):
    st = SpecialTokens.from_tokenizer(qwen3_tokenizer)
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    endoftext = qwen3_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert qwen3_tokenizer.bos_token is None  # Qwen has no BOS
    assert st.eos_id == qwen3_tokenizer.eos_token_id == im_end
    assert st.pad_id == endoftext
    assert st.chat_end_id == im_end
    assert st.stop_ids == [im_end]
    assert st.answer_end() == [im_end]


@pytest.mark.parametrize("base_eos", [False, True])
def test_special_tokens_of_qwen25_style(tokenizers, base_eos):
    tok = qwen25(tokenizers, base_eos)
    st = SpecialTokens.from_tokenizer(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    assert st.chat_end_id == im_end
    if base_eos:
        assert st.eos_id == endoftext and st.stop_ids == [endoftext, im_end]
    else:
        assert st.eos_id == im_end and st.stop_ids == [im_end]


def test_generation_config_eos_ids_are_stop_ids(qwen3_tokenizer):
    from transformers import GenerationConfig

    endoftext = qwen3_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    st = SpecialTokens.from_tokenizer(qwen3_tokenizer, GenerationConfig(eos_token_id=[endoftext, im_end]))
    assert st.stop_ids == [im_end, endoftext]  # unique, tokenizer's EOS first


def _check_ft_layout(tok, st, prompt, answer, num_slots, system_default: bool):
    answer_ids = ids(tok, answer)
    ex = st.ft_example(num_slots, prompt, answer_ids)
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, **st.chat_kwargs)
    full = ids(tok, rendered)
    end = tok.convert_tokens_to_ids("<|im_end|>")

    # placeholders: n slots then [FT], right where the user's content begins
    before, _ = st.chat_pieces(prompt)
    n = len(before)
    assert ex.ids[n : n + num_slots] == [SLOT] * num_slots and ex.ids[n + num_slots] == FT
    assert sum(1 for i in ex.ids if i < 0) == num_slots + 1
    assert tok.decode(before).endswith("<|im_start|>user\n")
    if system_default:
        assert tok.decode(before).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")

    # without the placeholders: the template's own rendering, up to and including the answer's end token
    plain = [i for i in ex.ids if i >= 0]
    assert plain == full[: len(plain)]
    assert plain[-1] == end
    assert tok.decode(full[len(plain) :]) == "\n"  # only the template's newline after <|im_end|> remains
    # labels: exactly the answer and its end token
    assert len(ex.labels) == len(ex.ids)
    k = len(answer_ids) + 1
    assert ex.labels[-k:] == answer_ids + [end]
    assert all(lab == IGNORE for lab in ex.labels[:-k])
    assert ex.ids[-k:] == answer_ids + [end]

    # the inference layout is the same prefix without the answer
    gen = st.ft_example(num_slots, prompt, None)
    assert gen.ids == ex.ids[:-k] and all(lab == IGNORE for lab in gen.labels)
    with_prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True, **st.chat_kwargs)
    assert [i for i in gen.ids if i >= 0] == ids(tok, with_prompt)


@pytest.mark.parametrize("prompt,answer", list(zip(PROMPTS, ANSWERS)))
def test_ft_layout_qwen3_is_the_chat_template_with_slots(qwen3_tokenizer, prompt, answer):
    st = SpecialTokens.from_tokenizer(qwen3_tokenizer)
    _check_ft_layout(qwen3_tokenizer, st, prompt, answer, num_slots=8, system_default=False)
    # Qwen3: thinking off, the empty think block precedes the answer
    _, after = st.chat_pieces(prompt)
    assert qwen3_tokenizer.decode(after).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("base_eos", [False, True])
@pytest.mark.parametrize("prompt,answer", list(zip(PROMPTS, ANSWERS))[:3])
def test_ft_layout_qwen25_is_the_chat_template_with_slots(tokenizers, prompt, answer, base_eos):
    tok = qwen25(tokenizers, base_eos)
    st = SpecialTokens.from_tokenizer(tok)
    _check_ft_layout(tok, st, prompt, answer, num_slots=4, system_default=True)
    _, after = st.chat_pieces(prompt)
    assert tok.decode(after).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<think>" not in tok.decode(after)


def test_model_uses_the_tokenizer_chat_layout(make_icae, tokenizers):
    tok = qwen25(tokenizers, base_eos=True)
    model = make_icae("qwen2", tokenizer=tok)
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # [AE] ends with the tokenizer's EOS; an instruction answer ends with the chat turn's end
    ae = model.ae_example(4, [10, 11])
    assert ae.ids == [SLOT] * 4 + [hicae.layout.AE, 10, 11, endoftext]
    assert ae.labels == [IGNORE] * 5 + [10, 11, endoftext]
    ft = model.tokens.ft_example(4, "Q?", [10, 11])
    assert ft.labels[-3:] == [10, 11, im_end]
    lm = model.lm_example(4, list(range(100, 120)))
    assert lm.labels == [IGNORE] * (5 + 8) + list(range(108, 120))  # leave_tokens_for_lm = 8


def test_no_chat_template_is_a_config_error(qwen3_tokenizer):
    tok = tokenizer_variant(qwen3_tokenizer)
    tok.chat_template = None
    st = SpecialTokens.from_tokenizer(tok)
    assert st.chat_end_id is None and st.stop_ids == [tok.eos_token_id]
    assert st.answer_end() == [tok.eos_token_id]
    with pytest.raises(ConfigError, match="chat template"):
        st.ft_example(4, "Q?", None)


def test_template_that_rewrites_the_user_message_is_a_config_error(qwen3_tokenizer):
    tok = tokenizer_variant(qwen3_tokenizer, template="{% for m in messages %}{{ m['content'] | lower }}{% endfor %}")
    st = SpecialTokens.from_tokenizer(tok)
    with pytest.raises(ConfigError, match="verbatim"):
        st.chat_pieces("q")


def test_placeholder_survives_tokenizer_rendering(qwen3_tokenizer):
    text = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": PLACEHOLDER + "x"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text.count(PLACEHOLDER) == 1


def test_tokenize_adds_no_special_tokens(qwen3_tokenizer):
    texts = ["Hello world", "<|im_end|> is text here", "x"]
    out = tokenize(qwen3_tokenizer, texts)
    assert out[0] == ids(qwen3_tokenizer, "Hello world") == qwen3_tokenizer("Hello world")["input_ids"]  # no BOS
    assert out[2] == ids(qwen3_tokenizer, "x")
    # a special token's string in user text is text (tests/test_user_text.py has the rest)
    assert out[1] == ids(qwen3_tokenizer, "<|") + ids(qwen3_tokenizer, "im_end|> is text here")
    assert qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>") not in out[1]
    assert tokenize(qwen3_tokenizer, []) == []


# ---- nothing hard-coded to Mistral -------------------------------------------------------------------

SRC = Path(hicae.__file__).resolve().parent
MISTRAL_IDS = re.compile(r"(?<![\w.])(733|16289|28793)(?![\w.])")
# eos_token_id = 2, bos == 1, "eos": 2, or Mistral's [INST] tags
HARD_BOS_EOS = re.compile(r"(?i)\b\w*(bos|eos)\w*['\"]?\s*(==|!=|=|:)\s*[12]\b|\[/?INST\]")


def test_no_mistral_ids_or_hardcoded_bos_eos_in_source():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 10
    offenders = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if MISTRAL_IDS.search(line) or HARD_BOS_EOS.search(line):
                offenders.append(f"{f.relative_to(SRC)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_grep_would_catch_offenders():
    assert MISTRAL_IDS.search("inst_ids = [733, 16289, 28793]")
    assert not MISTRAL_IDS.search("x = 17330") and not MISTRAL_IDS.search("lr = 0.733")
    for bad in ["eos_token_id=2", "if bos_id == 1:", '{"eos_id": 2}', "stop = tok == 2 or EOS==2", "prompt = '[INST] q [/INST]'"]:
        assert HARD_BOS_EOS.search(bad), bad
    for ok in ["eos_id = tokenizer.eos_token_id", "n_eos = 20", "eos = gen_eos[0]", "x.ndim == 2"]:
        assert not HARD_BOS_EOS.search(ok), ok


def test_chat_end_found_when_only_the_added_tokens_table_marks_it_special(qwen3_tokenizer):
    # A tokenizer converted from GGUF (the real Qwen2.5 of tests/test_real_model.py) names only
    # <|endoftext|> as special: <|im_end|> is special in its added-tokens table alone. The end of an
    # assistant turn must still be <|im_end|>, not the EOS fallback.
    tok = tokenizer_variant(qwen3_tokenizer, template=QWEN25_TEMPLATE, eos="<|endoftext|>")
    tok.extra_special_tokens = []
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in tok.all_special_ids
    st = SpecialTokens.from_tokenizer(tok)
    assert st.chat_end_id == im_end and st.eos_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert st.stop_ids == [st.eos_id, im_end]
