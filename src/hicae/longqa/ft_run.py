"""The long-document fine-tuning run (``finetune.py``'s steps): documents, memories, optimizer, validation, resume.

Run folder (``--out_dir``): ``step-N/`` checkpoints (``save_pretrained`` plus ``optimizer.safetensors``
and ``state.json``), ``log.jsonl`` (one line per step, one per validation). Rerunning the same command
continues from the last checkpoint: documents and memories are rebuilt (deterministic, seeded), the
adapter and the optimizer's moments are read back, and step ``t`` reads the same document and asks the
same questions as it would have without the interruption (both seeded by the step).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..io.fileio import atomic_path, write_text_atomic
from ..instruct.build import text_rng
from ..instruct.questions import cloze_questions
from .documents import build_long_docs, parse_lengths
from .finetune import CLOZE_TRIES, DocMemory, askable, combined_loss, memorise, picked_doc, picked_ids, step_losses, tokenised, trainable
from .ft_settings import LongDocFTSettings
from .scoring import contains, strict

Log = Callable[[str], None]


def split_docs(docs: list[Any], s: LongDocFTSettings) -> tuple[list[Any], list[Any]]:
    """Training and validation documents: per language, the first ``val_docs`` of the first length over 1k
    (or the longest) are kept apart."""
    lengths = sorted({d.tokens for d in docs})
    val_len = next((n for n in lengths if n > 1000), lengths[-1]) if lengths else 0
    val, train = [], []
    for d in docs:
        if d.tokens == val_len and sum(v.lang == d.lang for v in val) < s.val_docs:
            val.append(d)
        else:
            train.append(d)
    return train, val


def lr_at(step: int, s: LongDocFTSettings) -> float:
    """Linear warm-up to ``lr``, then cosine to 10% of it at the last step (``step`` counts from 1)."""
    if step <= s.warmup:
        return s.lr * step / max(1, s.warmup)
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def doc_of_step(step: int, n: int, seed: int) -> int:
    """The document step ``step`` reads: each pass over the documents in its own seeded order."""
    epoch, i = divmod(step - 1, n)
    order = list(range(n))
    random.Random(f"{seed}:order:{epoch}").shuffle(order)
    return order[i]


def validate(model: Any, val: list[DocMemory], s: LongDocFTSettings) -> dict[str, Any]:
    """Cloze accuracy (the gold span in the greedy answer; and the strict score) on the validation documents,
    per language, with the evaluation's question shape (2 words / 4 characters). With ``retrieve_slots`` each
    question reads the segments BM25 picks for it (``memory_retrieved``), compressed by the encoder as it is now."""
    was = model.training
    model.eval()
    hits: dict[str, list[float]] = {}
    strict_hits: dict[str, list[float]] = {}
    examples = []
    with torch.no_grad():
        for dm in val:
            qs = cloze_questions(dm.doc.text, s.val_questions, text_rng(s.seed + 1, dm.doc.id), dm.doc.lang)
            if not qs:
                continue
            if s.retrieve_slots:
                out = [model.generate_ids(model.compress_ids([picked_ids(model, dm, q.prompt, s.retrieve_slots)[0]]),
                                          [q.prompt], max_new_tokens=16)[0] for q in qs]
            else:
                out = model.generate_ids(dm.mem, [q.prompt for q in qs], max_new_tokens=16)
            answers = model.tokenizer.batch_decode(out, skip_special_tokens=True)
            for q, a in zip(qs, answers):
                hits.setdefault(dm.doc.lang, []).append(contains(a, q.gold or "", dm.doc.lang))
                strict_hits.setdefault(dm.doc.lang, []).append(strict(a, q.gold or "", dm.doc.lang))
            examples.append({"doc": dm.doc.id, "question": qs[0].prompt, "gold": qs[0].gold, "answer": answers[0]})
    model.train(was)
    return {"accuracy": {k: sum(v) / len(v) for k, v in hits.items()},
            "strict": {k: sum(v) / len(v) for k, v in strict_hits.items()},
            "n": {k: len(v) for k, v in hits.items()}, "examples": examples}


def _last_checkpoint(out: Path) -> Path | None:
    done = [p for p in out.glob("step-*") if (p / "state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_step(model: Any, opt: torch.optim.Optimizer, names: dict[int, str], out: Path, step: int) -> Path:
    path = out / f"step-{step}"
    model.save_pretrained(str(path))
    tensors = {}
    for p_id, st in ((id(p), opt.state[p]) for g in opt.param_groups for p in g["params"] if p in opt.state):
        for k, v in st.items():
            tensors[f"{names[p_id]}::{k}"] = v.detach().reshape(-1) if v.dim() == 0 else v.detach().contiguous()
    with atomic_path(path / "optimizer.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(path / "state.json", json.dumps({"step": step}))
    return path


def load_optimizer(opt: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter], path: Path) -> None:
    tensors = load_file(str(path / "optimizer.safetensors"))
    for name, p in named.items():
        st = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == name}
        if st:
            opt.state[p] = {k: (v.reshape(()) if k == "step" else v) for k, v in st.items()}


def train(s: LongDocFTSettings, log: Log, command: str) -> dict[str, Any]:
    from ..io.checkpoint import load_trained_weights
    from .load import load_checkpoint, protocol_docs

    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lengths = parse_lengths(s.lengths)
    model = load_checkpoint(s.checkpoint, s, max(lengths) + 16)
    resume = _last_checkpoint(out)
    if resume is not None:
        load_trained_weights(model, resume)
        log(f"resuming from {resume}")
    named = trainable(model, s.train_encoder)
    log(f"training {sum(p.numel() for p in named.values())} parameters ({len(named)} tensors); encoder "
        f"{'trains' if s.train_encoder else 'frozen'}")
    docs: list[Any] = []
    for lang in s.language_list:
        d, notes = build_long_docs(protocol_docs(s, lang, held_out=False), lang, lengths, s.docs_per_length,
                                   model.tokenizer, s.seed + 7)  # other starts than the evaluation's documents
        docs += d
        for n in notes:
            log(n)
    docs, unaskable = askable(docs)
    if unaskable:
        log(f"left out, no cloze question in {CLOZE_TRIES} draws: {', '.join(d.id for d in unaskable)}")
    train_docs, val_docs = split_docs(docs, s)
    model.eval()
    if s.retrieve_slots:  # each step compresses the segments it picks: no memory of whole documents
        mems = tokenised(model, train_docs + val_docs)
    else:
        t = time.perf_counter()
        mems = memorise(model, train_docs + val_docs, log)
        log(f"{len(mems)} memories in {time.perf_counter() - t:.0f}s")
    train_m, val_m = mems[: len(train_docs)], mems[len(train_docs):]
    opt = torch.optim.AdamW(list(named.values()), lr=s.lr, weight_decay=s.weight_decay)
    start = 0
    if resume is not None:
        load_optimizer(opt, named, resume)
        start = json.loads((resume / "state.json").read_text())["step"]
    names = {id(p): n for n, p in named.items()}
    logf = (out / "log.jsonl").open("a")
    if start == 0 and val_m:
        v = validate(model, val_m, s)
        logf.write(json.dumps({"step": 0, "val": v}, ensure_ascii=False) + "\n")
        log(f"step 0 validation {v['accuracy']} strict {v['strict']}")
    model.train()
    from ..speed import bf16_adapter_training

    for step in range(start + 1, s.steps + 1):
        t = time.perf_counter()
        dm = train_m[doc_of_step(step, len(train_m), s.seed)]
        rng = random.Random(f"{s.seed}:step:{step}")
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        ctx = bf16_adapter_training(model) if model.dtype == torch.bfloat16 else contextlib.nullcontext()
        with ctx:
            if s.retrieve_slots:
                picked = picked_doc(model, dm, rng, s.retrieve_slots, grad=s.train_encoder)
                if picked is None:
                    raise ValueError(f"step {step}: its document {dm.doc.id!r} yields no cloze question")
                dm = picked
            losses = step_losses(model, dm, rng, s.questions, s.ae_rows)
            loss = combined_loss(losses, s.ae_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        opt.step()
        rec = {"step": step, "doc": dm.doc.id, "loss": float(loss.detach()), "lr": lr_at(step, s),
               "s": round(time.perf_counter() - t, 2),
               **{f"{k}_loss": float(v.detach().mean()) for k, v in losses.items() if v.numel()}}
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        if step % 10 == 0 or step == start + 1:
            log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        if val_m and (step % s.val_every == 0 or step == s.steps):
            v = validate(model, val_m, s)
            logf.write(json.dumps({"step": step, "val": v}, ensure_ascii=False) + "\n")
            log(f"step {step} validation {v['accuracy']} strict {v['strict']} e.g. {v['examples'][:1]}")
        if step % s.save_every == 0 or step == s.steps:
            save_step(model, opt, names, out, step)
            log(f"saved {out}/step-{step}")
    logf.close()
    write_text_atomic(out / "command.txt", command + "\n")
    return {"out_dir": str(out), "steps": s.steps}

