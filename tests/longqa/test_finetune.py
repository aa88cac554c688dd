"""Long-document fine-tuning on cached memories (hicae/longqa/finetune.py, ft_run.py): exact checks on tiny models."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hicae import ICAE, ICAEConfig
from hicae.demo.assets import load_qwen3_tokenizer
from hicae.batching import pad_decoder
from hicae.errors import ConfigError
from hicae.longqa.documents import LongDoc
from hicae.longqa.finetune import (DocMemory, askable, combined_loss, memorise, picked_doc, question_rows, segment_rows,
                                   shared_prefix_losses, step_losses, tokenised, trainable, trainable_decoder_side)
from hicae.instruct.questions import cloze_questions
from hicae.longqa.ft_settings import LongDocFTSettings
from hicae.longqa.retrieved import pick_segments, segment_ids, sub_memory
from hicae.demo.tiny import tiny_model

from conftest import TINY_ICAE, perturb_trainable

ROOT = Path(__file__).resolve().parents[2]
TEXT = " ".join(f"Section {i}. The driver number {i} registers its device with bus {i % 5}, then the probe "
                f"routine allocates {i * 64} bytes." for i in range(10))


def _model(positions: str = "follow", decoder_lora_r: int = 4, seed: int = 0) -> ICAE:
    torch.manual_seed(100 + seed)
    cfg = ICAEConfig(**{**TINY_ICAE, "model_max_length": 1024, "decoder_lora_r": decoder_lora_r,
                        "decoder_positions": positions})
    m = ICAE(tiny_model("qwen3", seed=seed, initializer_range=0.5), load_qwen3_tokenizer(), cfg)
    perturb_trainable(m, seed=seed + 1)
    return m.eval()


def _doc_memory(model: ICAE) -> DocMemory:
    return memorise(model, [LongDoc("en-x-0", "en", 0, TEXT)])[0]


@pytest.mark.parametrize("positions", ["follow", "sequential"])
def test_shared_prefix_losses_equal_the_rows_own_losses_and_gradients(positions):
    model = _model(positions)
    dm = _doc_memory(model)
    named = trainable_decoder_side(model)
    _, rows = question_rows(model, dm, random.Random(0), 3)
    assert len(rows) == 3 and len({len(r.ids) for r in rows}) > 1  # rests of different lengths: padding is exercised
    placement = (model.placements(dm.mem) or [None])[0]

    shared = shared_prefix_losses(model, dm.slots, placement, rows)
    g_shared = torch.autograd.grad(shared.sum(), list(named.values()))
    b = pad_decoder(rows, model.tokens.pad_id)
    slots = torch.cat([dm.slots] * len(rows))
    full, _ = model.token_losses(b.ids, b.labels, b.attention_mask, slots,
                                 None if placement is None else [placement] * len(rows))
    g_full = torch.autograd.grad(full.sum(), list(named.values()))
    assert shared.shape == full.shape and shared.numel() > 3
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    for a, c in zip(g_shared, g_full):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in g_shared)


def test_segment_rows_read_exactly_the_slots_of_the_segment_compressed_alone():
    model = _model()
    dm = _doc_memory(model)
    k = model.icae_config.mem_size
    slots, placements, exs = segment_rows(model, dm, random.Random(3), 2)
    assert slots.shape[0] == 2 * k and len(exs) == 2 and len(placements) == 2
    for j, ex in enumerate(exs):
        seg = [t for t, lab in zip(ex.ids[1:], ex.labels[1:]) if lab != -100][:-1]  # the text, without the end token
        alone = model.compress_ids([seg])
        torch.testing.assert_close(slots[j * k:(j + 1) * k], alone.slots[0], rtol=1e-5, atol=1e-5)
        assert placements[j] == model.placements(alone)[0]


def test_only_the_decoder_side_trains_and_a_step_lowers_the_loss():
    model = _model()
    dm = _doc_memory(model)
    enc_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters() if "lora_" in n}
    named = trainable_decoder_side(model)
    assert set(model.trainable_parameters()) == {n for n, p in model.named_parameters()
                                                 if any(p is q for q in named.values())}
    opt = torch.optim.AdamW(list(named.values()), lr=1e-2)
    model.train()
    first = None
    for _ in range(6):  # the same document and questions: the loss must go down
        loss = combined_loss(step_losses(model, dm, random.Random(0), 2, 1), 0.5)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first
    for n, p in model.encoder.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, enc_before[n])


def test_a_checkpoint_without_a_decoder_adapter_is_refused():
    with pytest.raises(ConfigError, match="decoder_lora_r"):
        trainable_decoder_side(_model(decoder_lora_r=0))


@pytest.mark.parametrize("positions", ["follow", "sequential"])
def test_picked_doc_is_the_memory_the_evaluation_reads_for_its_question(positions):
    """retrieve_slots training: the step's memory is what memory_retrieved reads for the anchor question
    (BM25's segments of the document, whole, within the budget), slot for slot, and its text is theirs."""
    model = _model(positions)
    dm = _doc_memory(model)
    k = model.icae_config.mem_size
    rng = random.Random(5)
    picked = picked_doc(model, dm, rng, 3 * k, grad=False)
    anchor = cloze_questions(TEXT, 1, random.Random(5), "en")[0]  # the draw picked_doc made with the same seed
    segs = segment_ids(model, dm.ids)
    keep = pick_segments([model.tokenizer.decode(x) for x in segs], anchor.prompt, k, 3 * k)
    assert len(keep) == 3 and keep == sorted(keep) and len(segs) > 3
    assert picked.ids == [t for i in keep for t in segs[i]]
    assert picked.doc.text == model.tokenizer.decode(picked.ids) and picked.doc.id.endswith(",".join(map(str, keep)))
    want = sub_memory(model, dm.mem, keep)
    torch.testing.assert_close(picked.slots, want.slots[0], rtol=1e-5, atol=1e-5)
    assert model.placements(picked.mem) == model.placements(want)


def test_a_document_whose_draws_can_fail_is_retried_and_one_that_never_yields_is_left_out():
    """A Chinese text whose CJK runs mostly repeat their cues fails some cloze draws: the step draws again
    (same rng, so a resumed run draws the same); one with no unique cue at all is left out before training."""
    model = _model()
    never = LongDoc("zh-never", "zh", 0, "甲乙丙丁" * 40)
    mixed = LongDoc("zh-mixed", "zh", 0, "甲乙丙丁" * 40 + "。天地玄黄宇宙洪荒日月盈昃辰宿")
    first_fails = next(seed for seed in range(200) if not cloze_questions(mixed.text, 1, random.Random(seed), "zh"))
    assert askable([never, mixed]) == ([mixed], [never])
    dm = memorise(model, [mixed])[0]
    picked = picked_doc(model, dm, random.Random(first_fails), 2 * model.icae_config.mem_size, grad=False)
    assert picked is not None and picked.ids
    assert picked_doc(model, memorise(model, [never])[0], random.Random(0), 8, grad=False) is None


def test_train_encoder_moves_the_encoder_and_a_picked_step_lowers_the_loss():
    model = _model()
    dm = tokenised(model, [LongDoc("en-x-0", "en", 0, TEXT)])[0]
    assert dm.mem is None
    named = trainable(model, encoder=True)
    assert "mem_embeddings" in named and any(n.startswith("encoder.") for n in named)
    assert set(model.trainable_parameters()) == {n for n, p in model.named_parameters()
                                                 if any(p is q for q in named.values())}
    before = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.AdamW(list(named.values()), lr=1e-2)
    model.train()
    first = None
    for _ in range(6):  # the same picks and questions each time: the loss must go down
        rng = random.Random(1)
        sub = picked_doc(model, dm, rng, 2 * model.icae_config.mem_size, grad=True)
        loss = combined_loss(step_losses(model, sub, rng, 2, 1), 0.5)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        assert named["mem_embeddings"].grad is not None and float(named["mem_embeddings"].grad.abs().sum()) > 0
        opt.step()
    assert float(loss.detach()) < first
    assert all(not torch.equal(p, before[n]) for n, p in named.items() if n.startswith("encoder.") and "lora_B" in n)


def test_train_encoder_needs_retrieve_slots():
    with pytest.raises(ConfigError, match="--retrieve_slots"):
        LongDocFTSettings(checkpoint="x", train_encoder=True)
    with pytest.raises(ConfigError, match="--retrieve_slots"):
        LongDocFTSettings(checkpoint="x", retrieve_slots=-1)


def _script():
    spec = importlib.util.spec_from_file_location("longdoc_ft", ROOT / "experiments" / "longdoc_ft.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_inputs(tmp_path):
    """A saved tiny checkpoint, a corpus of four documents and a run folder for experiments/longdoc_ft.py."""
    ckpt = tmp_path / "ckpt"
    _model().save_pretrained(ckpt, save_base=True)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": TEXT.replace("driver", w)}) + "\n"
                              for w in ("driver", "module", "daemon", "service")))
    return ckpt, corpus, tmp_path / "run"


def test_run_end_to_end_and_an_interrupted_run_continues_to_the_same_weights(tmp_path):
    ckpt, corpus, out = _run_inputs(tmp_path)
    argv = ["--checkpoint", str(ckpt), "--corpus", str(corpus), "--languages", "en", "--lengths", "60,120",
            "--docs_per_length", "2", "--steps", "4", "--save_every", "2", "--val_every", "2", "--val_questions", "2",
            "--dtype", "fp32", "--out_dir", str(out)]
    assert _script().main(argv) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "val" in r] == [0, 2, 4]
    assert (out / "step-4" / "optimizer.safetensors").exists()
    # interrupted after step 2: its last checkpoint is step-2; rerunning the command ends at the same weights
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "step-4")
    assert _script().main([a if a != str(out) else str(again) for a in argv]) == 0
    a = load_file(str(next((out / "step-4").glob("icae_embeddings.safetensors"))))
    b = load_file(str(next((again / "step-4").glob("icae_embeddings.safetensors"))))
    assert a.keys() == b.keys() and any(k.startswith("decoder_lora.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    start = load_file(str(ckpt / "icae_embeddings.safetensors"))
    assert not torch.equal(a["task_embeddings"], start["task_embeddings"])  # it trained
    torch.testing.assert_close(a["mem_embeddings"], start["mem_embeddings"], rtol=0, atol=0)  # encoder side frozen


def test_a_picked_run_trains_the_encoder_and_continues_to_the_same_weights(tmp_path):
    ckpt, corpus, out = _run_inputs(tmp_path)
    argv = ["--checkpoint", str(ckpt), "--corpus", str(corpus), "--languages", "en", "--lengths", "60,120",
            "--docs_per_length", "2", "--steps", "3", "--save_every", "2", "--val_every", "3", "--val_questions", "2",
            "--retrieve_slots", "8", "--train_encoder", "--dtype", "fp32", "--out_dir", str(out)]
    assert _script().main(argv) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert all("@" in r["doc"] for r in log if "loss" in r)  # each step read picked segments
    assert [r["step"] for r in log if "val" in r] == [0, 3] and "strict" in log[0]["val"]
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "step-3")
    assert _script().main([a if a != str(out) else str(again) for a in argv]) == 0
    start = {**load_file(str(ckpt / "adapter_model.safetensors")), **load_file(str(ckpt / "icae_embeddings.safetensors"))}
    for name in ("adapter_model.safetensors", "icae_embeddings.safetensors"):
        a, b = load_file(str(out / "step-3" / name)), load_file(str(again / "step-3" / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    a = load_file(str(out / "step-3" / "icae_embeddings.safetensors"))
    assert not torch.equal(a["mem_embeddings"], start["mem_embeddings"])  # the encoder side trained
