"""Held-out answer loss (hicae/longqa/answer_loss.py): each condition equals an independent computation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hicae import ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.demo.tiny import tiny_model
from hicae.longqa.answer_loss import answer_losses, compress, record_kl, record_losses
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


def test_kl_of_the_question_alone_equals_the_plain_base_by_hand(model):
    """none: KL(p_full || p_none) at each answer token from transformers' own logits of the two chat turns."""
    tok = model.tokenizer
    target = tok(REC["answer"], add_special_tokens=False)["input_ids"] + model.tokens.answer_end()
    logp = []
    for content in (f"{REC['input']}\n\n{REC['prompt']}", REC["prompt"]):
        ids = model.tokens.chat_ids(content) + target
        with torch.no_grad(), model.plain_decoding():
            logits = model.decoder(input_ids=torch.tensor([ids])).logits[0].float()  # [T, V]
        logp.append(F.log_softmax(logits[len(ids) - len(target) - 1 : -1], -1))  # the positions predicting target
    want = (logp[0].exp() * (logp[0] - logp[1])).sum(-1)  # [N]
    got = record_kl(model, REC, "none")
    assert got.shape == want.shape and float(want.min()) > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="against the full text"):
        record_kl(model, REC, "full")


def test_kl_of_the_memory_equals_what_ft_distill_trains(model):
    """memory: the logged KL of a --ft_distill training batch of the record (temperature 1), the teacher rows
    built by the Collator, equals the held-out measure summed over the answer's tokens."""
    cfg = dataclasses.replace(model.icae_config, ft_distill=0.5, distill_temperature=1.0)
    batch = Collator(model.tokenizer, model.tokens, cfg, mode="finetune")([{**REC, "index": 0}])
    saved, model.icae_config = model.icae_config, cfg
    try:
        with torch.no_grad():
            out = model(**batch)
        model.icae_config = dataclasses.replace(cfg, distill_temperature=3.0)  # the measure is the plain KL, T = 1
        got = record_kl(model, REC, "memory")
    finally:
        model.icae_config = saved
    assert int(out["distill_tokens"]) == got.numel() and float(got.min()) >= 0
    torch.testing.assert_close(got.sum(), out["distill_loss_sum"].float(), rtol=1e-4, atol=1e-5)


def test_answer_losses_adds_each_conditions_mean_kl(model):
    other = {**REC, "input": "A different text: the scheduler wakes the idle task every tick."}
    out = answer_losses(model, [REC, other], ("memory", "memory_foreign", "full", "none"), kl=True)
    assert set(out["en"]) == {"records", "memory", "memory_foreign", "full", "none",
                              "kl_memory", "kl_memory_foreign", "kl_none"}
    # equal answers: the token mean is the mean of the two records'; each reads the other's input as foreign
    for cond in ("memory", "none"):
        want = sum(float(record_kl(model, r, cond).mean()) for r in (REC, other)) / 2
        assert out["en"][f"kl_{cond}"] == pytest.approx(want, abs=1e-4)
    foreign = [float(record_kl(model, r, "memory_foreign", compress(model, f["input"])).mean())
               for r, f in ((REC, other), (other, REC))]
    assert out["en"]["kl_memory_foreign"] == pytest.approx(sum(foreign) / 2, abs=1e-4)
    assert "kl_memory" not in answer_losses(model, [REC], ("memory",))["en"]
