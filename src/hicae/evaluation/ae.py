"""``ae``: reconstruct texts from their memory ([AE] decoding) and score the reconstruction.

Per text: BLEU-4 (sacrebleu, sentence level), exact match (the decoded text equals the reference
text), token accuracy (share of reference token positions reproduced at the same position). The
reference is the text that was compressed (after ``--overlong truncate``, its head). Overall and per
group: corpus BLEU-4, mean exact match, token accuracy pooled over all reference tokens; groups
are compression-ratio buckets (tokens per slot, powers of two) and, for hierarchical memory,
the top memory level of each text.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from . import metrics
from .decoding import decode
from .eval_task import EvalTask
from .records import TextRecord, read_texts
from .report import Bars, Table, TaskResult
from .runtime import EvalSettings, bucket_key, compress_ids, group_by, progress_batches, ratio_bucket, text_levels


def _aggregate(rows: list[dict[str, Any]], tokenize: str = "auto") -> dict[str, Any]:
    ref_tokens = sum(r["ref_tokens"] for r in rows)
    return {
        "n": len(rows),
        "bleu": metrics.corpus_bleu([r["prediction"] for r in rows], [r["reference"] for r in rows], tokenize),
        "sentence_bleu": sum(r["bleu"] for r in rows) / len(rows),
        "exact_match": sum(r["exact_match"] for r in rows) / len(rows),
        "token_accuracy": sum(r["token_accuracy"] * r["ref_tokens"] for r in rows) / max(1, ref_tokens),
        "tokens": ref_tokens,
        "slots": sum(r["slots"] for r in rows),
    }


def run_ae(model: Any, records: list[TextRecord], s: EvalSettings) -> TaskResult:
    metrics.require_bleu()
    hier = model.hierarchical
    rows: list[dict[str, Any]] = []
    records = records[: s.limit] if s.limit else records
    if not records:
        raise DataError("no records to evaluate")
    for batch in progress_batches(records, s.batch_size, "ae", s.progress):
        ids = [model.check_length(x, where=r.where) for r, x in zip(batch, model.tokens.text_ids([r.text for r in batch]))]
        mem = compress_ids(model, ids, s.max_slots)
        if s.max_new_tokens:
            preds = model.reconstruct_ids(mem, max_new_tokens=s.max_new_tokens)
        else:  # each text's own limit (its length + 8), so results do not depend on the batch
            preds = model.reconstruct_ids(mem, max_new_tokens=max(len(x) for x in ids) + 8)
            preds = [p[: len(x) + 8] for p, x in zip(preds, ids)]
        refs, outs = decode(model, ids), decode(model, preds)
        for r, ref_ids, pred_ids, ref, out, n_slots, level in zip(batch, ids, preds, refs, outs, mem.num_slots, text_levels(mem)):
            rows.append({
                "where": r.where, "tokens": len(ref_ids), "slots": n_slots, "ratio": len(ref_ids) / n_slots,
                "ratio_bucket": ratio_bucket(len(ref_ids), n_slots), "level": level,
                "language": metrics.script_of(ref),
                "bleu": metrics.sentence_bleu(out, ref, s.bleu_tokenize), "exact_match": float(out == ref),
                "token_accuracy": metrics.token_accuracy(pred_ids, ref_ids), "ref_tokens": len(ref_ids),
                "pred_tokens": len(pred_ids), "reference": ref, "prediction": out,
            })

    tk = s.bleu_tokenize
    overall = _aggregate(rows, tk)
    by_ratio = {k: _aggregate(v, tk) for k, v in sorted(group_by(rows, "ratio_bucket").items(), key=lambda kv: bucket_key(kv[0]))}
    # Chinese and other text apart: each group's BLEU with its own tokenisation (auto: zh / 13a)
    by_language = {k: _aggregate(v, tk) for k, v in sorted(group_by(rows, "language").items())}
    breakdowns: dict[str, Any] = {"by_ratio": by_ratio, "by_language": by_language}
    cols = ["group", "n", "BLEU-4", "sentence BLEU", "exact match", "token accuracy", "tokens/slot"]

    def row(name: str, a: dict[str, Any]) -> list[Any]:
        return [name, a["n"], a["bleu"], a["sentence_bleu"], a["exact_match"], a["token_accuracy"], a["tokens"] / max(1, a["slots"])]

    tables = [Table("Reconstruction", cols, [row("all", overall)]),
              Table("By compression ratio (tokens per slot)", cols, [row(k, a) for k, a in by_ratio.items()]),
              Table("By language (Chinese: text holding CJK characters)", cols, [row(k, a) for k, a in by_language.items()])]
    plots: list[Bars] = [Bars("by_ratio", "AE reconstruction by compression ratio", list(by_ratio),
                              {"BLEU-4 / 100": [a["bleu"] / 100 for a in by_ratio.values()],
                               "exact match": [a["exact_match"] for a in by_ratio.values()],
                               "token accuracy": [a["token_accuracy"] for a in by_ratio.values()]},
                              ylabel="score", xlabel="tokens per slot", ylim=(0, 1))]
    if hier:
        by_level = {str(k): _aggregate(v, tk) for k, v in sorted(group_by(rows, "level").items())}
        breakdowns["by_level"] = by_level
        tables.append(Table("By memory level (hierarchical)", cols, [row(f"level {k}", a) for k, a in by_level.items()]))
        plots.append(Bars("by_level", "AE reconstruction by memory level", [f"level {k}" for k in by_level],
                          {"BLEU-4 / 100": [a["bleu"] / 100 for a in by_level.values()],
                           "exact match": [a["exact_match"] for a in by_level.values()],
                           "token accuracy": [a["token_accuracy"] for a in by_level.values()]},
                          ylabel="score", xlabel="top memory level", ylim=(0, 1)))
    notes = [f"BLEU-4: sacrebleu, tokenisation {tk} (auto: zh, one token per CJK character, for a group holding Chinese, "
             "else 13a), corpus level per group; sentence BLEU: mean of per-text scores.",
             "token accuracy: reference positions reproduced at the same position, pooled over all reference tokens."]
    return TaskResult("ae", overall, breakdowns, rows, tables, plots, notes)


def _prepare(args: Any) -> list[TextRecord]:
    metrics.require_bleu()
    return read_texts(args.data, args.limit)


TASK = EvalTask("ae", "reconstruct texts from memory: BLEU-4, exact match, token accuracy (by compression ratio, by level)",
                reads_data=True, prepare=_prepare, run=lambda model, s, args, records: run_ae(model, records, s))
