"""``qa``: answer questions about texts from their memory, and from the full text as a baseline.

Memory answers: ``model.generate`` (the chat template around ``[slots] [FT] question``, greedy).
Full-text answers: the base model (no adapter) with the same chat template and the text inline
(user turn ``context + "\\n\\n" + question``). Both are scored against the reference answer(s),
taking the best over references: ROUGE-L F1, token F1 and exact match (see ``metrics``).
``judge_file`` receives one JSON line per question with both answers, for an external pairwise
judge (no API is called here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..fileio import write_text_atomic
from ..tokens import tokenize
from . import metrics
from .decoding import chat_prompt_ids, decode, generate_plain
from .records import QARecord
from .report import Bars, Table, TaskResult
from .runtime import EvalSettings, bucket_key, compress_ids, group_by, progress_batches, ratio_bucket

METRICS = ("rouge_l", "f1", "exact_match")
NAMES = {"rouge_l": "ROUGE-L", "f1": "token F1", "exact_match": "exact match"}
DEFAULT_MAX_NEW_TOKENS = 64


def fulltext_content(context: str, question: str) -> str:
    """The user turn of the full-text baseline: the text, a blank line, the question."""
    return f"{context}\n\n{question}"


def _mean_scores(rows: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    return {m: sum(r[f"{prefix}_{m}"] for r in rows) / len(rows) for m in METRICS}


def run_qa(model: Any, records: list[QARecord], s: EvalSettings, fulltext: bool = True,
           judge_file: str | Path | None = None) -> TaskResult:
    if judge_file is not None and not fulltext:
        raise ConfigError("--judge_file compares memory and full-text answers: it cannot be used with --skip_fulltext")
    max_new = s.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    window = getattr(model.base_config, "max_position_embeddings", None)
    over_window = 0
    rows: list[dict[str, Any]] = []
    records = records[: s.limit] if s.limit else records
    if not records:
        raise DataError("no records to evaluate")
    for batch in progress_batches(records, s.batch_size, "qa", s.progress):
        first: dict[str, str] = {}  # each distinct context once (PwC asks several questions per text)
        for r in batch:
            first.setdefault(r.context, r.where)
        ctx_ids = [model.check_length(x, where=w) for w, x in zip(first.values(), tokenize(model.tokenizer, list(first)))]
        index = {c: i for i, c in enumerate(first)}
        mem = compress_ids(model, ctx_ids, s.max_slots)[[index[r.context] for r in batch]]
        mem_answers = decode(model, model.generate_ids(mem, [r.question for r in batch], max_new_tokens=max_new))
        if fulltext:
            prompts = [chat_prompt_ids(model, fulltext_content(r.context, r.question)) for r in batch]
            over_window += sum(1 for p in prompts if window and len(p) + max_new > window)
            full_answers = decode(model, generate_plain(model, prompts, max_new))
        for j, r in enumerate(batch):
            ntok, nslot = len(ctx_ids[index[r.context]]), mem.num_slots[j]
            row: dict[str, Any] = {"where": r.where, "question": r.question, "answers": r.answers,
                                   "context_tokens": ntok, "slots": nslot, "ratio_bucket": ratio_bucket(ntok, nslot),
                                   "answer_memory": mem_answers[j]}
            row.update({f"memory_{k}": v for k, v in metrics.qa_scores(mem_answers[j], r.answers).items()})
            if fulltext:
                row["answer_fulltext"] = full_answers[j]
                row.update({f"fulltext_{k}": v for k, v in metrics.qa_scores(full_answers[j], r.answers).items()})
            rows.append(row)

    sources = ["memory"] + (["fulltext"] if fulltext else [])
    summary: dict[str, Any] = {"n": len(rows), **{src: _mean_scores(rows, src) for src in sources},
                               "mean_context_tokens": sum(r["context_tokens"] for r in rows) / len(rows),
                               "mean_slots": sum(r["slots"] for r in rows) / len(rows)}
    by_ratio = {k: {"n": len(v), "memory": _mean_scores(v, "memory")} for k, v in
                sorted(group_by(rows, "ratio_bucket").items(), key=lambda kv: bucket_key(kv[0]))}
    label = {"memory": "memory slots", "fulltext": "full text (base model)"}
    tables = [Table("Answers", ["context", *[NAMES[m] for m in METRICS]],
                    [[label[src], *[summary[src][m] for m in METRICS]] for src in sources]),
              Table("Memory answers by compression ratio (tokens per slot)", ["tokens/slot", "n", *[NAMES[m] for m in METRICS]],
                    [[k, a["n"], *[a["memory"][m] for m in METRICS]] for k, a in by_ratio.items()])]
    plots = [Bars("scores", "QA: memory vs full text", [NAMES[m] for m in METRICS],
                  {label[src]: [summary[src][m] for m in METRICS] for src in sources}, ylabel="score", ylim=(0, 1))]
    notes = ["Scores are the best over the reference answers; words are lower-cased letter/digit runs, "
             "punctuation dropped (exact match and F1 also drop a/an/the)."]
    if over_window:
        notes.append(f"{over_window} full-text prompt(s) plus answer exceed the base model's max_position_embeddings "
                     f"({window}): its full-text answers there are out of its trained window.")
    if judge_file is not None:
        lines = [{"id": i, "where": r["where"], "question": r["question"], "reference": r["answers"][0],
                  "references": r["answers"], "answer_memory": r["answer_memory"], "answer_fulltext": r["answer_fulltext"]}
                 for i, r in enumerate(rows)]
        write_text_atomic(judge_file, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
        notes.append(f"Pairwise-judging file: {judge_file} ({len(lines)} lines).")
    return TaskResult("qa", summary, {"by_ratio": by_ratio}, rows, tables, plots, notes)
