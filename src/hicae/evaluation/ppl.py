"""``ppl``: perplexity of a continuation under four kinds of context.

Each text is cut into a context and its last ``continuation_tokens`` tokens (the continuation).
The first ``leave_tokens`` continuation tokens are read but not scored (at least one: without
context the first token has nothing to be predicted from), so every condition scores the very
same tokens:

- ``none``: the base model reads the continuation alone;
- ``memory``: the decoder reads ``[slots] [LM] continuation``, the slots being the compressed
  context (training's LM objective; no ``[LM]`` for a checkpoint trained with
  ``add_special_token_for_lm=False``);
- ``full``: the base model reads ``context continuation`` as plain tokens;
- ``truncated``: the base model reads the context's last N tokens, N = the memory's slot count,
  then the continuation: the same number of positions as the memory, as plain text.

Perplexity = exp(total NLL / scored tokens), pooled over texts. A context over the checkpoint's
length limit is an error, or with ``--overlong truncate`` keeps its *last* tokens (the ones next to
the continuation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, DataError
from ..layout import lm_prefix, with_target
from .decoding import example_nll
from .eval_task import EvalTask
from .records import TextRecord, read_texts
from .report import Bars, Table, TaskResult
from .runtime import EvalSettings, bucket_key, compress_ids, context_limit, group_by, progress_batches, ratio_bucket

CONDITIONS = ("none", "memory", "full", "truncated")
LABELS = {"none": "no context", "memory": "memory slots", "full": "full text", "truncated": "text truncated to #slots"}


def parse_conditions(spec: str) -> list[str]:
    conds = [c.strip() for c in spec.split(",") if c.strip()]
    bad = [c for c in conds if c not in CONDITIONS]
    if bad or not conds:
        raise ConfigError(f"--conditions: unknown {bad or spec!r}; choose from {','.join(CONDITIONS)}")
    return list(dict.fromkeys(conds))


def check_settings(continuation_tokens: int, leave_tokens: int) -> None:
    if leave_tokens < 1:
        raise ConfigError(f"--leave_tokens must be >= 1 (with no context the first token cannot be scored), got {leave_tokens}")
    if continuation_tokens <= leave_tokens:
        raise ConfigError(f"--continuation_tokens ({continuation_tokens}) must exceed --leave_tokens ({leave_tokens})")


def split_text(model: Any, ids: list[int], where: str, continuation_tokens: int) -> tuple[list[int], list[int]]:
    """``(context, continuation)``; the context obeys the checkpoint's length limit (tail kept on truncate)."""
    if len(ids) <= continuation_tokens:
        raise DataError(f"{where}: the text has {len(ids)} tokens, no more than --continuation_tokens "
                        f"{continuation_tokens}: nothing is left as context (lower --continuation_tokens)")
    ctx, cont = ids[:-continuation_tokens], ids[-continuation_tokens:]
    limit = context_limit(model)
    if len(ctx) > limit:
        if model.icae_config.overlong != "truncate":
            raise DataError(f"{where}: the context has {len(ctx)} tokens, over this checkpoint's limit of {limit}; "
                            "pass --overlong truncate to keep its last tokens")
        ctx = ctx[-limit:]
    return ctx, cont


def _summary(nll: float, n: int) -> dict[str, Any]:
    return {"nll": nll / n if n else float("nan"), "ppl": math.exp(nll / n) if n else float("nan"), "scored_tokens": n}


def run_ppl(model: Any, records: list[TextRecord], s: EvalSettings, continuation_tokens: int = 64,
            leave_tokens: int = 1, conditions: list[str] | None = None) -> TaskResult:
    conditions = list(conditions or CONDITIONS)
    check_settings(continuation_tokens, leave_tokens)
    uses_mem = bool({"memory", "truncated"} & set(conditions))
    rows: list[dict[str, Any]] = []
    records = records[: s.limit] if s.limit else records
    if not records:
        raise DataError("no records to evaluate")
    for batch in progress_batches(records, s.batch_size, "ppl", s.progress):
        split = [split_text(model, x, r.where, continuation_tokens)
                 for r, x in zip(batch, model.tokens.text_ids([r.text for r in batch]))]
        ctxs, conts = [c for c, _ in split], [c for _, c in split]
        mem = compress_ids(model, ctxs, s.max_slots) if uses_mem else None
        nslots = mem.num_slots if mem is not None else [0] * len(batch)
        results: dict[str, tuple[list[float], list[int]]] = {}
        for cond in conditions:
            if cond == "memory":
                lm_token = model.icae_config.add_special_token_for_lm
                exs = [with_target(lm_prefix(n, lm_token), c, loss_from=leave_tokens) for n, c in zip(nslots, conts)]
                results[cond] = example_nll(model, exs, mem)
            else:
                prefixes = {"none": [[] for _ in ctxs], "full": ctxs,
                            "truncated": [c[-n:] if n < len(c) else c for c, n in zip(ctxs, nslots)]}[cond]
                exs = [with_target(p, c, loss_from=leave_tokens) for p, c in zip(prefixes, conts)]
                results[cond] = example_nll(model, exs)
        for i, r in enumerate(batch):
            row: dict[str, Any] = {"where": r.where, "context_tokens": len(ctxs[i]), "slots": nslots[i]}
            if uses_mem:
                row["ratio_bucket"] = ratio_bucket(len(ctxs[i]), nslots[i])
            for cond, (sums, counts) in results.items():
                row[f"{cond}_nll_sum"] = sums[i]
                row["scored_tokens"] = counts[i]
                row[f"{cond}_ppl"] = math.exp(sums[i] / counts[i])
            rows.append(row)

    def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n = sum(r["scored_tokens"] for r in rs)
        return {c: _summary(sum(r[f"{c}_nll_sum"] for r in rs), n) for c in conditions}

    summary = {"texts": len(rows), "continuation_tokens": continuation_tokens, "leave_tokens": leave_tokens,
               "mean_context_tokens": sum(r["context_tokens"] for r in rows) / len(rows), **agg(rows)}
    if uses_mem:
        summary["mean_slots"] = sum(r["slots"] for r in rows) / len(rows)
    cols = ["condition", "perplexity", "NLL (nats/token)", "scored tokens"]
    tables = [Table("Continuation perplexity", cols,
                    [[LABELS[c], summary[c]["ppl"], summary[c]["nll"], summary[c]["scored_tokens"]] for c in conditions])]
    breakdowns: dict[str, Any] = {}
    if uses_mem:
        by_ratio = {k: {"n": len(v), **agg(v)} for k, v in
                    sorted(group_by(rows, "ratio_bucket").items(), key=lambda kv: bucket_key(kv[0]))}
        breakdowns["by_ratio"] = by_ratio
        tables.append(Table("Perplexity by compression ratio of the context (tokens per slot)",
                            ["tokens/slot", "n"] + [LABELS[c] for c in conditions],
                            [[k, a["n"]] + [a[c]["ppl"] for c in conditions] for k, a in by_ratio.items()]))
    plots = [Bars("perplexity", "Continuation perplexity", [LABELS[c] for c in conditions],
                  {"perplexity": [summary[c]["ppl"] for c in conditions]}, ylabel="perplexity")]
    notes = [f"Each text: context, then its last {continuation_tokens} tokens as continuation; the first {leave_tokens} "
             "continuation token(s) are read but not scored, so every condition scores the same tokens.",
             "'full', 'truncated' and 'no context' run the base model (no adapter) on plain tokens; 'memory' runs "
             "[slots] [LM] continuation."]
    return TaskResult("ppl", summary, breakdowns, rows, tables, plots, notes)


@dataclass
class PplFlags:
    _argument_group_name = "ppl"

    continuation_tokens: int = field(default=64, metadata={"help": "the last N tokens of each text are the continuation"})
    leave_tokens: int = field(default=1, metadata={"help": "the first N continuation tokens are read but not scored (>= 1)"})
    conditions: str = field(default="none,memory,full,truncated",
                            metadata={"help": "comma-separated subset of none,memory,full,truncated"})


def _prepare(args: Any) -> tuple[list[TextRecord], list[str]]:
    conditions = parse_conditions(args.conditions)
    check_settings(args.continuation_tokens, args.leave_tokens)
    return read_texts(args.data, args.limit), conditions


TASK = EvalTask(
    "ppl", "perplexity of a continuation: no context / memory / full text / text truncated to as many tokens as slots",
    reads_data=True, prepare=_prepare, flags=PplFlags,
    run=lambda model, s, args, prep: run_ppl(model, prep[0], s, args.continuation_tokens, args.leave_tokens, prep[1]))
