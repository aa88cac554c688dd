"""lm_distill and ft_distill: KL from the plain base reading the plain text (LM: the whole text; FT: the input and the
prompt in its chat turn) into the decoder reading the slots ([slots] [LM] continuation, [slots] [FT] prompt answer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hicae import ICAEConfig
from hicae.cli.train import build_parser
from hicae.training.data import Collator
from hicae.errors import ConfigError
from hicae.hierarchy import HierarchicalICAE
from hicae.demo.tiny import tiny_model

from conftest import TEXTS, build_icae

# LM examples from the short test texts: a continuation of more than 4 tokens, the first 2 without loss.
LM = dict(min_tokens_for_lm=4, leave_tokens_for_lm=2)
LONGER = [t + " " + t for t in TEXTS]  # 26-40 tokens: several segments, LM cuts at different places
SETTINGS = {
    "sequential": {},
    # the student reads follow positions through a decoder LoRA; the teacher stays the plain base at 0..n-1
    "follow+decoder_lora": dict(decoder_positions="follow", position_layout="spread", decoder_lora_r=4),
}


def model_and_collator(tok, lm_ratio=1.0, **cfg):
    model = build_icae(tok, "qwen3", **LM, **cfg).model
    return model, Collator(model.tokenizer, model.tokens, model.icae_config, "pretrain", lm_ratio, seed=0)


def records(texts=LONGER):
    return [{"text": t, "index": i} for i, t in enumerate(texts)]


def hand_terms(model, collator, r):
    """One example's per-token loss terms and KL by hand (see ``hand_loss``).  -> (terms [n], KL [n] or None)"""
    cfg = model.icae_config
    w, T = cfg.lm_distill, cfg.distill_temperature
    if "text" not in r:
        return hand_ft_terms(model, r)
    ids = model.tokens.text_ids([r["text"]])[0]
    task, head, tgt = collator.split(ids, r["index"])
    mem = model.compress_ids([head])
    ex = model.lm_example(mem.num_slots[0], tgt) if task == "lm" else model.ae_example(mem.num_slots[0], tgt)
    logits, at, ce = _student(model, mem, ex)
    if task != "lm" or not w:
        return ce, None
    with torch.no_grad(), model.plain_decoding():
        t_logits = model.decoder(input_ids=torch.tensor([head + tgt])).logits[0].float()  # [n, V], positions 0..n-1
    t_at = [len(head) + j - 1 for j in range(cfg.leave_tokens_for_lm, len(tgt))]
    kl = _kl_by_hand(t_logits[t_at], logits[at], T)
    return (1 - w) * ce + w * kl, kl


def hand_ft_terms(model, r):
    """An instruction record's answer-token terms: ``(1-w) CE + w T^2 KL`` against the plain base reading the chat
    turn ``input + blank line + prompt`` then ``answer <end>`` (``ft_distill``)."""
    cfg = model.icae_config
    w, T = cfg.ft_distill, cfg.distill_temperature
    mem = model.compress_ids(model.tokens.text_ids([r["input"]]))
    ans = model.tokenizer(r["answer"], add_special_tokens=False)["input_ids"]
    logits, at, ce = _student(model, mem, model.tokens.ft_example(mem.num_slots[0], r["prompt"], ans))
    if not w:
        return ce, None
    prompt = model.tokens.chat_ids(r["input"] + "\n\n" + r["prompt"])
    target = ans + model.tokens.answer_end()
    with torch.no_grad(), model.plain_decoding():
        t_logits = model.decoder(input_ids=torch.tensor([prompt + target])).logits[0].float()
    kl = _kl_by_hand(t_logits[[len(prompt) + j - 1 for j in range(len(target))]], logits[at], T)
    return (1 - w) * ce + w * kl, kl


def _student(model, mem, ex):
    """The decoder reading one example alone: its logits [T, V], the positions predicting labelled tokens, their CE."""
    pos = model.example_positions(ex.ids, (model.placements(mem) or [None])[0])
    hidden = model.decoder.model(inputs_embeds=model.decoder_inputs(torch.tensor([ex.ids]), mem.slots[0]),
                                 position_ids=None if pos is None else torch.tensor([pos])).last_hidden_state
    logits = model.decoder.lm_head(hidden)[0].float()  # [T, V]
    at = [i - 1 for i, y in enumerate(ex.labels) if y != -100]
    ys = torch.tensor([ex.labels[i + 1] for i in at])
    return logits, at, F.cross_entropy(logits[at], ys, reduction="none")


def _kl_by_hand(t_logits, s_logits, T):
    p = torch.softmax(t_logits / T, -1)
    q = torch.log_softmax(s_logits / T, -1)
    return (p * (p.log() - q)).sum(-1) * T * T


def hand_loss(model, collator, recs):
    """The loss of one batch computed by hand, example by example: CE on every labelled token, and on taught
    tokens ``(1-w) CE + w T^2 KL`` with the teacher's logits from a separate plain forward (no grad) of the
    example's plain text (LM: head + continuation) and the student's from the decoder reading the slots.
    -> (loss, KL sum, KL count)"""
    terms, kls = zip(*(hand_terms(model, collator, r) for r in recs))
    terms = torch.cat(terms)
    kls = [k for k in kls if k is not None]
    kl = torch.cat(kls) if kls else torch.zeros(0)
    return terms.sum() / terms.numel(), kl.sum(), kl.numel()


def test_off_by_default_batch_and_loss_bit_identical(qwen3_tokenizer):
    """lm_distill=0: the batch has no teacher entries and the loss is exactly the mean token CE, as before;
    a batch that does carry teacher entries gives that very loss too."""
    model, col = model_and_collator(qwen3_tokenizer)
    batch = col(records())
    assert not any(k.startswith("teacher_") for k in batch)
    out = model(**batch)
    tok, _ = model.token_losses(batch["dec_ids"], batch["dec_labels"], batch["dec_mask"], _slots(model, batch))
    assert torch.equal(out["loss"], tok.sum() / tok.numel())
    assert "distill_loss_sum" not in out
    _, on = model_and_collator(qwen3_tokenizer, lm_distill=0.5)
    with_teacher = on(records())
    assert {"teacher_ids", "teacher_labels", "teacher_mask"} <= with_teacher.keys()
    assert torch.equal(model(**with_teacher)["loss"], out["loss"])


def _slots(model, batch):
    from hicae.batching import EncoderBatch

    spe = batch["segments_per_example"].tolist()
    slots = model.encode_rows(EncoderBatch(batch["enc_ids"], batch["enc_seg_lens"], spe))
    return slots.reshape(-1, slots.shape[-1])


@pytest.mark.parametrize("setting", SETTINGS)
def test_kl_equals_hand_computation_and_teacher_gets_no_gradient(qwen3_tokenizer, setting):
    """Loss, logged KL and gradients of a mixed AE + LM batch (padded on both sides) equal a hand computation,
    one example at a time, whose teacher is a separate no-grad plain forward of head + continuation; so batching
    changes nothing and no gradient flows through the teacher."""
    model, col = model_and_collator(qwen3_tokenizer, lm_ratio=0.5, lm_distill=0.3, distill_temperature=2.0,
                                    **SETTINGS[setting])
    model.train()  # dropout 0: train mode only checks that nothing differs from eval
    recs = records()
    batch = col(recs)
    assert set(batch["task"].tolist()) == {0, 1} and batch["teacher_ids"].shape[0] == int((batch["task"] == 1).sum())
    assert (batch["teacher_mask"] == 0).any() and (batch["dec_mask"] == 0).any()  # padding on both sides
    out = assert_batch_matches_hand(model, col, recs, batch, kl_atol=1e-6)
    assert int(out["distill_tokens"]) == int(out["lm_tokens"]) > 0


def assert_batch_matches_hand(model, col, recs, batch, kl_atol):
    """The batched loss, logged KL and gradients equal ``hand_loss``'s, one example at a time.  -> the model's output"""
    params = model.trainable_parameters()
    out = model(**batch)
    grads = torch.autograd.grad(out["loss"], list(params.values()), allow_unused=True)
    want, kl_sum, kl_n = hand_loss(model, col, recs)
    want_grads = torch.autograd.grad(want, list(params.values()), allow_unused=True)
    torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["distill_loss_sum"], kl_sum, rtol=1e-5, atol=kl_atol)
    assert int(out["distill_tokens"]) == kl_n
    for name, g, h in zip(params, grads, want_grads):
        assert (g is None) == (h is None), name
        if g is not None:
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6, msg=name)
    return out


def test_trainable_set_unchanged_and_frozen_base_gets_no_grad(qwen3_tokenizer):
    off, _ = model_and_collator(qwen3_tokenizer, decoder_lora_r=4)
    on, col = model_and_collator(qwen3_tokenizer, decoder_lora_r=4, lm_distill=1.0)
    assert off.trainable_parameters().keys() == on.trainable_parameters().keys()
    on.train()
    on(**col(records()))["loss"].backward()
    for name, p in on.named_parameters():
        assert (p.grad is None) != p.requires_grad, name  # the trained tensors, and only they, have gradients


def test_ae_only_batches_unaffected(qwen3_tokenizer):
    off, col_off = model_and_collator(qwen3_tokenizer, lm_ratio=0.0)
    on, col_on = model_and_collator(qwen3_tokenizer, lm_ratio=0.0, lm_distill=0.7)
    b_off, b_on = col_off(records()), col_on(records())
    assert b_off.keys() == b_on.keys() and all(torch.equal(b_off[k], b_on[k]) for k in b_off)
    out_off, out_on = off(**b_off), on(**b_on)
    assert torch.equal(out_off["loss"], out_on["loss"]) and "distill_loss_sum" not in out_on


def test_student_kl_decreases_with_training(qwen3_tokenizer):
    model, col = model_and_collator(qwen3_tokenizer, lm_distill=1.0, decoder_lora_r=4)
    assert_kl_falls(model, col(records()))


def assert_kl_falls(model, batch):
    """Eight Adam steps on one batch bring the student's mean KL below 70% of where it started."""
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters().values(), lr=1e-2)
    kls = []
    for _ in range(8):
        out = model(**batch)
        kls.append(float(out["distill_loss_sum"] / out["distill_tokens"]))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert kls[-1] < 0.7 * kls[0], kls


def test_config_flags_fingerprint_and_hierarchy(qwen3_tokenizer):
    parser = build_parser("pretrain")
    cfg = parser.parse(["--train_file", "x", "--output_dir", "o", "--lm_distill", "0.25",
                        "--distill_temperature", "2"])[2]
    assert (cfg.lm_distill, cfg.distill_temperature) == (0.25, 2.0)
    shape = {"hidden_size": 8}
    # training-only: a memory reads the same, so its fingerprint does not change
    assert ICAEConfig(lm_distill=0.5, distill_temperature=3.0).memory_fingerprint(shape) == ICAEConfig().memory_fingerprint(shape)
    for bad in (dict(lm_distill=-0.1), dict(lm_distill=1.5), dict(distill_temperature=0.0),
                dict(distill_temperature=float("inf"))):
        with pytest.raises(ConfigError):
            ICAEConfig(**bad)
    with pytest.raises(ConfigError, match="lm_distill"):
        HierarchicalICAE(tiny_model("qwen3", seed=0, dtype=torch.float32), qwen3_tokenizer,
                         ICAEConfig(mem_size=4, compression_rate=2, lora_r=4, lm_distill=0.5))


def test_checkpointed_kl_and_gradient_checkpointing_give_the_same_gradients(qwen3_tokenizer):
    """Long LM batches take ``_kl`` under checkpointing (teacher logits recomputed from its states, never saved),
    and the decoder may run under gradient checkpointing (the teacher's no-grad forward inside it)."""
    from torch.utils.checkpoint import checkpoint

    from hicae.model import _kl

    model, col = model_and_collator(qwen3_tokenizer, lm_distill=0.5, decoder_lora_r=4)
    head = model.decoder.get_output_embeddings()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, head.weight.shape[1], generator=g, requires_grad=True)
    t = torch.randn(5, head.weight.shape[1], generator=g)
    (a,) = torch.autograd.grad(_kl(head, h, t, 2.0).sum(), h)
    (b,) = torch.autograd.grad(checkpoint(_kl, head, h, t, 2.0, use_reentrant=False).sum(), h)
    torch.testing.assert_close(a, b)
    model.train()
    batch = col(records())
    params = list(model.trainable_parameters().values())
    plain = torch.autograd.grad(model(**batch)["loss"], params, allow_unused=True)
    model.gradient_checkpointing_enable()
    ckpt = torch.autograd.grad(model(**batch)["loss"], params, allow_unused=True)
    for x, y in zip(plain, ckpt):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


# ---- ft_distill: the answer tokens of instruction records learn the full-text teacher's distributions ----------

QA = [{"input": t, "prompt": q, "answer": a} for t, q, a in zip(
    LONGER, ["What is it about?", "Who is named?", "Summarise it.", "What comes next?"],
    ["It is about a test.", "Nobody", "A short text.", "The end of it."])]


def ft_model_and_collator(tok, **cfg):
    model = build_icae(tok, "qwen3", **LM, **cfg).model
    return model, Collator(model.tokenizer, model.tokens, model.icae_config, "finetune", lm_ratio=1.0, seed=0)


def mixed_records():
    """Instruction records and rehearsal texts (LM by lm_ratio=1) interleaved, as RehearsalMix serves them."""
    return [QA[0], {"text": LONGER[1], "index": 1}, QA[2], QA[3], {"text": LONGER[0], "index": 0}, QA[1]]


@pytest.mark.parametrize("setting", SETTINGS)
def test_ft_kl_equals_hand_computation_in_a_mixed_batch(qwen3_tokenizer, setting):
    """A fine-tuning batch of instruction records and LM rehearsal texts, both distilled with different weights:
    the loss, the logged KL and the gradients equal a hand computation example by example, whose FT teacher is a
    separate no-grad plain forward of the chat turn ``input + blank line + prompt`` followed by ``answer <end>``."""
    model, col = ft_model_and_collator(qwen3_tokenizer, lm_distill=0.4, ft_distill=0.7, distill_temperature=2.0,
                                       **SETTINGS[setting])
    model.train()
    recs = mixed_records()
    batch = col(recs)
    tasks = batch["task"].tolist()
    assert tasks.count(2) == 4 and tasks.count(1) == 2 and batch["teacher_ids"].shape[0] == 6
    # the KL of two near-uniform tiny-model distributions is a sum of cancelling terms over the vocabulary:
    # a batch padded longer than one example moves it by ~1e-5 absolute
    out = assert_batch_matches_hand(model, col, recs, batch, kl_atol=5e-5)
    assert int(out["distill_tokens"]) == int(out["lm_tokens"] + out["ft_tokens"])


def test_ft_distill_alone_teaches_only_answers_and_off_leaves_the_batch(qwen3_tokenizer):
    """ft_distill without lm_distill: teacher rows for the instruction records only (LM rehearsal keeps its CE);
    ft_distill=0: no teacher entries and the very loss of plain CE."""
    off, col_off = ft_model_and_collator(qwen3_tokenizer)
    b_off = col_off(mixed_records())
    assert not any(k.startswith("teacher_") for k in b_off)
    on, col_on = ft_model_and_collator(qwen3_tokenizer, ft_distill=0.5)
    b_on = col_on(mixed_records())
    assert b_on["teacher_ids"].shape[0] == 4
    assert all(torch.equal(b_off[k], b_on[k]) for k in b_off)
    out = on(**b_on)
    assert int(out["distill_tokens"]) == int(out["ft_tokens"]) > 0
    assert torch.equal(off(**b_off)["loss"], ft_model_and_collator(qwen3_tokenizer)[0](**b_on)["loss"])


def test_ft_teacher_reads_what_the_memory_holds(qwen3_tokenizer):
    """An input cut by ``overlong='truncate'``: the teacher reads the kept head (decoded), not the whole input."""
    model, col = ft_model_and_collator(qwen3_tokenizer, ft_distill=1.0, model_max_length=10, overlong="truncate")
    r = QA[0]
    batch = col([r])
    head = model.tokens.text_ids([r["input"]])[0][:10]
    ans = model.tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + model.tokens.answer_end()
    prompt = model.tokens.chat_ids(model.tokenizer.decode(head) + "\n\n" + r["prompt"])
    assert batch["teacher_ids"][0].tolist() == prompt + ans
    assert batch["teacher_labels"][0].tolist() == [-100] * len(prompt) + ans


def test_ft_distill_config_and_student_learns_the_teacher(qwen3_tokenizer):
    cfg = build_parser("finetune").parse(["--train_file", "x", "--output_dir", "o", "--ft_distill", "0.5"])[2]
    assert cfg.ft_distill == 0.5
    shape = {"hidden_size": 8}
    assert ICAEConfig(ft_distill=0.5).memory_fingerprint(shape) == ICAEConfig().memory_fingerprint(shape)
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="ft_distill"):
            ICAEConfig(ft_distill=bad)
    with pytest.raises(ConfigError, match="ft_distill"):
        HierarchicalICAE(tiny_model("qwen3", seed=0, dtype=torch.float32), qwen3_tokenizer,
                         ICAEConfig(mem_size=4, compression_rate=2, lora_r=4, ft_distill=0.5))
    model, col = ft_model_and_collator(qwen3_tokenizer, ft_distill=1.0, decoder_lora_r=4)
    assert_kl_falls(model, col(QA))
