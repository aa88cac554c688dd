"""Held-out answer loss (hicae/longqa/answer_loss.py): each condition equals an independent computation."""

from __future__ import annotations

import pytest
import torch

from hicae import ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.demo.tiny import tiny_model
from hicae.longqa.answer_loss import answer_losses, record_losses
from hicae.training.data import Collator

from conftest import TINY_ICAE, perturb_trainable

REC = {"input": "The probe routine of driver 7 allocates 448 bytes, then registers the device with bus 2.",
       "prompt": 'In the text, which 2 words come right after "then registers the"? Answer with those words only.',
       "answer": "device with", "lang": "en"}


@pytest.fixture(scope="module")
def model() -> ICAE:
    torch.manual_seed(0)
    cfg = ICAEConfig(**{**TINY_ICAE, "model_max_length": 256, "decoder_lora_r": 4, "decoder_positions": "follow"})
    m = ICAE(tiny_model("qwen3", seed=0, initializer_range=0.5), load_qwen3_tokenizer(), cfg)
    perturb_trainable(m, seed=1)
    return m.eval()


def test_memory_condition_equals_the_finetuning_loss(model):
    """The memory condition is what `hicae finetune` trains: the Collator's batch through ICAE.forward."""
    batch = Collator(model.tokenizer, model.tokens, model.icae_config, mode="finetune")([{**REC, "index": 0}])
    with torch.no_grad():
        want = model(**batch)["loss"]
        got = record_losses(model, REC, "memory")
    n_answer = len(model.tokenizer(REC["answer"], add_special_tokens=False)["input_ids"]) + 1  # + end of turn
    assert got.numel() == n_answer
    torch.testing.assert_close(got.float().mean(), want.float(), rtol=1e-4, atol=1e-4)


def test_text_conditions_equal_the_plain_base_with_labels(model):
    """full / none: the plain base (no adapter) reading the chat turn, scored by transformers' own loss."""
    tok = model.tokenizer
    target = tok(REC["answer"], add_special_tokens=False)["input_ids"] + model.tokens.answer_end()
    for cond, content in (("full", f"{REC['input']}\n\n{REC['prompt']}"), ("none", REC["prompt"])):
        prefix = model.tokens.chat_ids(content)
        ids = torch.tensor([prefix + target])
        labels = torch.tensor([[-100] * len(prefix) + target])
        with torch.no_grad(), model.plain_decoding():
            want = model.decoder(input_ids=ids, labels=labels).loss
            got = record_losses(model, REC, cond)
        torch.testing.assert_close(got.float().mean(), want.float(), rtol=1e-4, atol=1e-4)


def test_answer_losses_groups_by_language_and_refuses_unknown_conditions(model):
    zh = {**REC, "lang": "zh"}
    out = answer_losses(model, [REC, REC, zh], ("memory", "none"))
    assert out["en"]["records"] == 2 and out["zh"]["records"] == 1
    assert out["en"]["memory"] == pytest.approx(float(record_losses(model, REC, "memory").float().mean()), abs=1e-3)
    with pytest.raises(ValueError, match="one input only"):
        answer_losses(model, [REC, REC], ("memory_foreign",))


def test_foreign_memory_is_the_next_other_input_of_the_language(model):
    other = {**REC, "input": "A different text: the scheduler wakes the idle task every tick."}
    out = answer_losses(model, [REC, REC, other], ("memory", "memory_foreign"))
    own = record_losses(model, REC, "memory").float().mean()
    swapped = record_losses(model, {**REC, "input": other["input"]}, "memory").float().mean()
    # both copies of REC read `other`'s input (the next other input); `other` reads REC's (wrapping around);
    # the three answers have equal token counts, so the token mean is the mean of the three
    back = record_losses(model, {**other, "input": REC["input"]}, "memory").float().mean()
    want = (2 * float(swapped) + float(back)) / 3
    assert out["en"]["memory_foreign"] == pytest.approx(want, abs=1e-3) and float(own) != float(swapped)
    with pytest.raises(ValueError, match="unknown condition"):
        record_losses(model, REC, "bm25")
