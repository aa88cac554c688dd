"""The long-document QA run: documents -> questions -> every condition's answers -> scores and tables.

Same questions and the same greedy decoding for every condition; one question at a time, so the
time to the first answer token is that question's own. Memory conditions compress each document
once (``compress_s``) and answer every question from that memory (``answer_s`` per question):
the cost of "compress once, ask many". ``full`` rereads the whole text for every question.
``memory_retrieved`` compresses once too but reads, for each question, only the slots of the segments
BM25 picks (``retrieved.py``); its slot count (what sets the baselines' N) is what the decoder reads.
``memory_retrieved_each`` reads the same picks one segment at a time and keeps the surest answer: its
answer exists only when every pick has been read, so its time to first token is its whole answer time.

Rows go to ``rows.jsonl`` one (document, condition) at a time; a rerun skips those done, so an
interrupted run continues. ``long_qa.json`` and ``long_qa.md`` are rewritten from all rows.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import LogitsProcessorList

from ..decoding.generation import generate_plain
from ..evaluation.decoding import chat_prompt_ids, decode
from ..layout import fulltext_content
from ..evaluation.runtime import compress_ids
from ..instruct.build import text_rng
from ..instruct.questions import Question, cloze_questions
from .contexts import FirstTokenClock, bm25_ids, last_n_ids
from .decoded import read_back, read_back_segments
from .documents import LongDoc
from .report import read_rows, write_report
from .scoring import contains, f1, strict
from .retrieved import pick_segments, read_each, retrieved_memory, segment_ids, segments_read, surest
from .settings import COMPRESSED as ONCE, DECODED, EACH, MEMORY, PICKED, RETRIEVED, LongQASettings


def questions_of(doc: LongDoc, s: LongQASettings) -> list[Question]:
    return cloze_questions(doc.text, s.questions, text_rng(s.seed, doc.id), doc.lang)


def _timed(fn: Callable[[LogitsProcessorList], list[list[int]]]) -> tuple[list[int], float, float]:
    clock = FirstTokenClock()
    out = fn(LogitsProcessorList([clock]))[0]
    total = time.perf_counter() - clock.start
    return out, clock.first if clock.first is not None else total, total


def _plain_answer(model: Any, content: str, s: LongQASettings) -> tuple[str, float, float, int]:
    prompt = chat_prompt_ids(model, content)
    ids, ttft, total = _timed(lambda lp: generate_plain(model, [prompt], s.max_new_tokens, logits_processor=lp))
    return decode(model, [ids])[0], ttft, total, len(prompt)


def _compress(model: Any, doc: LongDoc, max_slots: int | None, cond: str,
              memory_info: dict[str, Any]) -> tuple[Any, list[int]]:
    """The document's memory, timed, and the token ids it was made from; records its slot count and
    compress time under ``memory_info[cond]``."""
    ids = model.check_length(model.tokens.text_ids([doc.text])[0], where=doc.id)
    t = time.perf_counter()
    mem = compress_ids(model, [ids], max_slots)
    memory_info[cond] = {"slots": int(mem.num_slots[0]), "compress_s": time.perf_counter() - t}
    return mem, ids


def _cue_end(tok: Any, doc: LongDoc, q: Question) -> int:
    """Token count of the document up to the gold span (the cue's end): where retrieval must reach."""
    return len(tok(doc.text[: q.extra["offset"]], add_special_tokens=False)["input_ids"])


def _segment_of(token: int, seg_ends: list[int]) -> int:
    """The segment holding token ``token - 1`` (the cue's last token), given the segments' end offsets."""
    return min(bisect_right(seg_ends, max(0, token - 1)), len(seg_ends) - 1)


def run_condition(cond: str, doc: LongDoc, qs: list[Question], models: dict[str, Any], plain: Any,
                  s: LongQASettings, budget: int, memory_info: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one condition on one document (one per question)."""
    tok = plain.tokenizer
    doc_ids = tok(doc.text, add_special_tokens=False)["input_ids"]
    window = s.full_max_tokens or getattr(plain.base_config, "max_position_embeddings", None)
    rows = []
    mem = cache = None
    decoded_ids: list[int] = []
    seg_texts: list[str] = []
    if cond in PICKED:  # the flat memory and the index its segments are picked by, once per document
        model = models["memory_flat"]
        whole, ids = _compress(model, doc, None, cond, memory_info)
        own = segment_ids(model, ids)
        seg_ends = list(accumulate(len(p) for p in own))
        t = time.perf_counter()
        seg_texts = [tok.decode(p) for p in (read_back_segments(model, whole) if s.retrieve_from == "read_back"
                                             else own)]
        if s.retrieve_from == "read_back":
            memory_info[cond]["prefix_s"] = time.perf_counter() - t  # the read-back: once per document
        k = model.icae_config.mem_size
        memory_info[cond].update(memory_slots=memory_info[cond]["slots"], segments=len(own),
                                 slots=segments_read(k, s.retrieve_slots, len(own)) * k,  # what the decoder reads
                                 retrieve_from=s.retrieve_from)
    elif cond == DECODED:  # the flat memory, read back as text once per document
        model = models["memory_flat"]
        mem, _ = _compress(model, doc, None, cond, memory_info)
        t = time.perf_counter()
        decoded_ids = read_back(model, mem)
        memory_info[cond]["prefix_s"] = time.perf_counter() - t  # the read-back: once per document
        memory_info[cond]["decoded_tokens"] = len(decoded_ids)
        mem = None
    elif cond in MEMORY:
        model = models[cond]
        mem, _ = _compress(model, doc, s.max_slots if cond == "memory_hier" else None, cond, memory_info)
        if s.prefix_cache:  # the decoder's pass over the memory, once per document: then each question only reads it
            t = time.perf_counter()
            cache = model.prefix_cache(mem)
            model.generate_ids(mem, [qs[0].prompt if qs else "?"], max_new_tokens=1, prefix_cache=cache)
            memory_info[cond]["prefix_s"] = time.perf_counter() - t
    for k, q in enumerate(qs):
        row: dict[str, Any] = {"doc": doc.id, "lang": doc.lang, "tokens": doc.tokens, "condition": cond, "q": k,
                               "question": q.prompt, "gold": q.gold, "gold_offset": q.extra["offset"],
                               "gold_depth": q.extra["offset"] / max(1, len(doc.text)), "budget": budget}
        if mem is not None:
            model = models[cond]
            out, ttft, total = _timed(lambda lp: model.generate_ids(mem, [q.prompt], max_new_tokens=s.max_new_tokens,
                                                                   prefix_cache=cache if s.prefix_cache else False,
                                                                   logits_processor=lp))
            answer, ctx = decode(model, [out])[0], memory_info[cond]["slots"]
            row.update(memory_info[cond], budget=memory_info[cond]["slots"])  # a memory's budget is its own size
        elif cond == RETRIEVED:
            model = models["memory_flat"]
            sub, keep = retrieved_memory(model, whole, seg_texts, q.prompt, s.retrieve_slots)
            out, ttft, total = _timed(lambda lp: model.generate_ids(sub, [q.prompt], max_new_tokens=s.max_new_tokens,
                                                                   prefix_cache=False, logits_processor=lp))
            answer, ctx = decode(model, [out])[0], sub.num_slots[0]
            row.update(memory_info[cond], budget=memory_info[cond]["slots"], chunks=keep,
                       gold_retrieved=_segment_of(_cue_end(tok, doc, q), seg_ends) in keep)
        elif cond == EACH:
            model = models["memory_flat"]
            keep = pick_segments(seg_texts, q.prompt, model.icae_config.mem_size, s.retrieve_slots)
            t = time.perf_counter()
            cands = read_each(model, whole, keep, q.prompt, s.max_new_tokens)
            ttft = total = time.perf_counter() - t  # the answer is known once every pick is read
            best = surest(cands)
            texts = decode(model, [c["ids"] for c in cands])
            answer, ctx = texts[cands.index(best)], model.icae_config.mem_size
            gold_seg = _segment_of(_cue_end(tok, doc, q), seg_ends)
            row.update(memory_info[cond], budget=memory_info[cond]["slots"], chunks=keep,
                       gold_retrieved=gold_seg in keep, chosen=best["segment"],
                       candidates=[{"segment": c["segment"], "answer": a, "logprob": c["logprob"],
                                    "gold_segment": c["segment"] == gold_seg} for c, a in zip(cands, texts)])
        elif cond == "full":
            prompt_len = len(chat_prompt_ids(plain, fulltext_content(doc.text, q.prompt)))
            if window and prompt_len + s.max_new_tokens > window:
                row.update(na=f"prompt of {prompt_len} tokens + answer over the window of {window}")
                rows.append(row)
                continue
            answer, ttft, total, _ = _plain_answer(plain, fulltext_content(doc.text, q.prompt), s)
            ctx = len(doc_ids)
        elif cond == DECODED:
            budget = memory_info[cond]["slots"]  # a memory's budget is its own size
            ctx_ids, taken = bm25_ids(decoded_ids, q.prompt, budget, s.chunk_tokens, tok)
            row.update(memory_info[cond], budget=budget, chunks=taken)
            answer, ttft, total, _ = _plain_answer(plain, fulltext_content(tok.decode(ctx_ids), q.prompt), s)
            ctx = len(ctx_ids)
        elif cond in ("last_n", "bm25"):
            if cond == "last_n":
                ctx_ids = last_n_ids(doc_ids, budget)
            else:
                ctx_ids, taken = bm25_ids(doc_ids, q.prompt, budget, s.chunk_tokens, tok)
                row["chunks"] = taken
                # did retrieval bring the gold's place? (the chunk holding the cue's end)
                row["gold_retrieved"] = (max(0, _cue_end(tok, doc, q) - 1) // s.chunk_tokens) in taken
            answer, ttft, total, _ = _plain_answer(plain, fulltext_content(tok.decode(ctx_ids), q.prompt), s)
            ctx = len(ctx_ids)
        else:  # none
            answer, ttft, total, _ = _plain_answer(plain, q.prompt, s)
            ctx = 0
        row.update(answer=answer, contains=contains(answer, q.gold, doc.lang), strict=strict(answer, q.gold, doc.lang),
                   f1=f1(answer, q.gold, doc.lang),
                   ttft_s=ttft, answer_s=total, context_tokens=ctx)
        rows.append(row)
    return rows


def evaluate(docs: list[LongDoc], models: dict[str, Any], plain: Any, s: LongQASettings, notes: list[str],
             log: Callable[[str], None] = print, command: str | None = None) -> dict[str, Any]:
    """Every condition on every document; ``models``: memory condition -> loaded model; ``plain``: the model
    whose base answers the text conditions (its adapter off)."""
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows = read_rows(rows_path)
    with open(rows_path, "w", encoding="utf-8") as f:  # rewritten without a cut last line, then appended
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    done = {(r["doc"], r["condition"]) for r in rows}
    conditions = [c for c in s.condition_list if c not in ONCE or c in s.memory_conditions]
    skipped = [c for c in s.condition_list if c not in conditions]
    if skipped:
        notes.append(f"conditions without a checkpoint, not run: {', '.join(skipped)}")
    memory_first = [c for c in conditions if c in ONCE] + [c for c in conditions if c not in ONCE]
    for doc in docs:
        qs = questions_of(doc, s)
        if not qs:
            notes.append(f"{doc.id}: no cloze question could be made")
            continue
        info: dict[str, Any] = {}
        prev = [r for r in rows if r["doc"] == doc.id and r["condition"] in ONCE and "slots" in r]
        for r in prev:
            info[r["condition"]] = {"slots": r["slots"], "compress_s": r["compress_s"]}
        for cond in memory_first:
            if (doc.id, cond) in done:
                continue
            # N: the largest memory among the conditions run (generous to the baselines), else --budget
            budget = max((v["slots"] for v in info.values()), default=s.budget or 0)
            t = time.perf_counter()
            new = run_condition(cond, doc, qs, models, plain, s, budget, info)
            with open(rows_path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            rows += new
            scored = [r for r in new if "na" not in r]
            acc = sum(r["contains"] for r in scored) / len(scored) if scored else float("nan")
            log(f"{doc.id} {cond}: accuracy {acc:.2f} over {len(scored)} ({time.perf_counter() - t:.1f} s)")
    documents = [{"id": d.id, "lang": d.lang, "tokens": d.tokens, "sources": d.sources[:50],
                  "n_sources": len(d.sources)} for d in docs]
    return write_report(rows, out, command, settings=dataclasses.asdict(s), notes=notes, documents=documents)


def seeded(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
