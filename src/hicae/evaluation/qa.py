"""``qa``: answer questions about texts from their memory, and from the full text as a baseline.

Memory answers: ``model.generate`` (the chat template around ``[slots] [FT] question``, greedy).
Full-text answers: the base model (no adapter) with the same chat template and the text inline
(user turn ``context + "\\n\\n" + question``). Both are scored against the reference answer(s),
taking the best over references: ROUGE-L F1, token F1 and exact match (see ``metrics``).
LongBench records that name their dataset are also scored by LongBench's official metric for it
(``longbench``: jieba words for Chinese, first line only for some datasets), reported per dataset
as its tables print them (0-100), with LongBench's generation length per dataset unless
``--max_new_tokens`` is given.
``judge_file`` receives one JSON line per question with both answers, for an external pairwise
judge (no API is called here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..decoding.generation import generate_plain
from ..errors import ConfigError, DataError
from ..io.fileio import write_text_atomic
from ..layout import fulltext_content
from . import longbench, metrics
from .decoding import chat_prompt_ids, decode
from .eval_task import EvalTask
from .prompts import assign_templates, load_templates
from .prompts import parse as parse_template
from .records import QARecord, read_qa
from .report import Bars, Table, TaskResult
from .runtime import EvalSettings, bucket_key, compress_ids, group_by, progress_batches, ratio_bucket

METRICS = ("rouge_l", "f1", "exact_match")
NAMES = {"rouge_l": "ROUGE-L", "f1": "token F1", "exact_match": "exact match"}
DEFAULT_MAX_NEW_TOKENS = 64


def memory_prompt(r: QARecord) -> str:
    """What follows the memory: the question, or the record's template without its context (``prompts``)."""
    return r.template.memory(r.question) if r.template else r.question


def fulltext_prompt(r: QARecord, context: str | None = None) -> str:
    """The full-text baseline's user turn: the record's template rendered as is, else ``fulltext_content``.
    ``context``: what the baseline reads instead of ``r.context`` (its head, when the memory holds only that)."""
    context = r.context if context is None else context
    return r.template.fulltext(context, r.question) if r.template else fulltext_content(context, r.question)


def head_text(model: Any, ids: list[int]) -> str:
    """The text of a truncated context's token ids (less the BOS that ``text_ids`` puts first, if any)."""
    return model.tokenizer.decode(ids[len(model.tokens.text_prefix):])


def _mean_scores(rows: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    return {m: sum(r[f"{prefix}_{m}"] for r in rows) / len(rows) for m in METRICS}


def _max_new_tokens(r: QARecord, s: EvalSettings) -> int:
    """--max_new_tokens, else LongBench's length for the record's dataset, else the default."""
    return s.max_new_tokens or longbench.DATASET_MAX_NEW_TOKENS.get(r.dataset or "", DEFAULT_MAX_NEW_TOKENS)


def _longbench_summary(rows: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """Per LongBench dataset: n, its metric, and 100 x the mean score of each answer source."""
    out = {}
    for name, group in sorted(group_by([r for r in rows if "dataset" in r], "dataset").items()):
        out[name] = {"n": len(group), "metric": longbench.DATASET_METRIC[name],
                     **{src: longbench.table_score([r[f"{src}_longbench"] for r in group]) for src in sources}}
    return out


def run_qa(model: Any, records: list[QARecord], s: EvalSettings, fulltext: bool = True,
           judge_file: str | Path | None = None, no_context: bool = False) -> TaskResult:
    """Answers from memory, and as baselines from the full text (``fulltext``) and from the question alone
    (``no_context``: the base model reading what follows the memory, without the memory: the floor that
    tells what the memory adds over the question), same greedy decoding; scored against the references."""
    if judge_file is not None and not fulltext:
        raise ConfigError("--judge_file compares memory and full-text answers: it cannot be used with --skip_fulltext")
    window = getattr(model.base_config, "max_position_embeddings", None)
    over_window = 0
    truncated: set[str] = set()  # distinct contexts cut to their head
    rows: list[dict[str, Any]] = []
    records = records[: s.limit] if s.limit else records
    if not records:
        raise DataError("no records to evaluate")
    for batch in progress_batches(records, s.batch_size, "qa", s.progress):
        first: dict[str, str] = {}  # each distinct context once (PwC asks several questions per text)
        for r in batch:
            first.setdefault(r.context, r.where)
        raw = model.tokens.text_ids(list(first))
        ctx_ids = [model.check_length(x, where=w) for w, x in zip(first.values(), raw)]
        # --overlong truncate: the memory holds the head of a long context; the full-text baseline reads that
        # head too, so that both answer from the same text
        heads = {c: head_text(model, x) for c, x, whole in zip(first, ctx_ids, raw) if len(x) < len(whole)}
        truncated.update(heads)
        index = {c: i for i, c in enumerate(first)}
        mem = compress_ids(model, ctx_ids, s.max_slots)[[index[r.context] for r in batch]]
        # rows of one batch may have different limits (LongBench datasets): generate to the largest and
        # cut each row at its own (greedy rows are independent, so the kept tokens are the same)
        limits = [_max_new_tokens(r, s) for r in batch]
        max_new = max(limits)
        mem_ids = model.generate_ids(mem, [memory_prompt(r) for r in batch], max_new_tokens=max_new)
        mem_answers = decode(model, [ids[:n] for ids, n in zip(mem_ids, limits)])
        if fulltext:
            prompts = [chat_prompt_ids(model, fulltext_prompt(r, heads.get(r.context))) for r in batch]
            over_window += sum(1 for p, n in zip(prompts, limits) if window and len(p) + n > window)
            full_ids = generate_plain(model, prompts, max_new)
            full_answers = decode(model, [ids[:n] for ids, n in zip(full_ids, limits)])
        if no_context:
            bare_ids = generate_plain(model, [chat_prompt_ids(model, memory_prompt(r)) for r in batch], max_new)
            bare_answers = decode(model, [ids[:n] for ids, n in zip(bare_ids, limits)])
        for j, r in enumerate(batch):
            ntok, nslot = len(ctx_ids[index[r.context]]), mem.num_slots[j]
            row: dict[str, Any] = {"where": r.where, "question": r.question, "answers": r.answers,
                                   "context_tokens": ntok, "slots": nslot, "ratio_bucket": ratio_bucket(ntok, nslot),
                                   "context_truncated": r.context in heads, "answer_memory": mem_answers[j]}
            if r.template:
                row.update(prompt_template=r.template.source, prompt_memory=memory_prompt(r))
            row.update({f"memory_{k}": v for k, v in metrics.qa_scores(mem_answers[j], r.answers).items()})
            if fulltext:
                row["answer_fulltext"] = full_answers[j]
                row.update({f"fulltext_{k}": v for k, v in metrics.qa_scores(full_answers[j], r.answers).items()})
            if no_context:
                row["answer_none"] = bare_answers[j]
                row.update({f"none_{k}": v for k, v in metrics.qa_scores(bare_answers[j], r.answers).items()})
            if r.dataset:
                row.update(dataset=r.dataset, longbench_metric=longbench.DATASET_METRIC[r.dataset])
                for src in ("memory", "fulltext", "none"):
                    answer = row.get(f"answer_{src}")
                    if answer is not None:
                        row[f"{src}_longbench"] = longbench.score(r.dataset, answer, r.answers, r.all_classes)
            rows.append(row)

    sources = ["memory"] + (["fulltext"] if fulltext else []) + (["none"] if no_context else [])
    summary: dict[str, Any] = {"n": len(rows), **{src: _mean_scores(rows, src) for src in sources},
                               "mean_context_tokens": sum(r["context_tokens"] for r in rows) / len(rows),
                               "mean_slots": sum(r["slots"] for r in rows) / len(rows)}
    by_ratio = {k: {"n": len(v), "memory": _mean_scores(v, "memory")} for k, v in
                sorted(group_by(rows, "ratio_bucket").items(), key=lambda kv: bucket_key(kv[0]))}
    label = {"memory": "memory slots", "fulltext": "full text (base model)", "none": "no context (base model)"}
    tables = [Table("Answers", ["context", *[NAMES[m] for m in METRICS]],
                    [[label[src], *[summary[src][m] for m in METRICS]] for src in sources]),
              Table("Memory answers by compression ratio (tokens per slot)", ["tokens/slot", "n", *[NAMES[m] for m in METRICS]],
                    [[k, a["n"], *[a["memory"][m] for m in METRICS]] for k, a in by_ratio.items()])]
    plots = [Bars("scores", "QA: memory vs " + " vs ".join(label[x].split(" (")[0] for x in sources[1:]) if sources[1:]
                  else "QA: memory", [NAMES[m] for m in METRICS],
                  {label[src]: [summary[src][m] for m in METRICS] for src in sources}, ylabel="score", ylim=(0, 1))]
    notes = ["Scores are the best over the reference answers; words are lower-cased letter/digit runs, "
             "punctuation dropped (exact match and F1 also drop a/an/the)."]
    lb = _longbench_summary(rows, sources)
    if lb:
        summary["longbench"] = lb
        tables.append(Table("LongBench, official metric per dataset (100 x mean, as its tables)",
                            ["dataset", "metric", "n", *[label[src] for src in sources]],
                            [[k, a["metric"], a["n"], *[a[src] for src in sources]] for k, a in lb.items()]))
        notes.append("LongBench scores follow its own scorer (THUDM/LongBench metrics.py): per-dataset metric, jieba "
                     "words for Chinese, first line only for trec/triviaqa/samsum/lsht.")
        unnamed = sum(1 for r in rows if "dataset" not in r)
        if unnamed:
            notes.append(f"{unnamed} record(s) name no LongBench dataset and have no LongBench score "
                         "(field 'dataset', or --longbench_dataset).")
    templated = sorted({r["prompt_template"] for r in rows if "prompt_template" in r})
    if templated:
        summary["prompt_templates"] = templated
        notes.append("Prompts from the templates " + "; ".join(templated) + ": full text renders the template with "
                     "the text inline; memory gets the template without its context (the instruction before it and "
                     "the text after it, one blank line between).")
    else:
        notes.append("Prompts: after the memory, the question alone; for the full text, the text, a blank line and "
                     "the question (--prompt_templates gives LongBench's per-dataset prompts).")
    cut = len(truncated)
    if cut:
        limit = model.length_limit()[0]
        summary["contexts_truncated"] = cut
        notes.append(f"{cut} context(s) over the length limit ({limit} tokens) were cut to their head (--overlong "
                     "truncate): memory and full-text answers both read only that head.")
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


@dataclass
class QAFlags:
    _argument_group_name = "qa"

    format: str = field(default="auto", metadata={"choices": ["auto", "pwc", "longbench"],
                                                  "help": "QA data format (auto: from the first record)"})
    longbench_dataset: str | None = field(default=None, metadata={
        "help": "LongBench data: the dataset whose official metric scores the answers (default: each record's "
                "'dataset' field), e.g. hotpotqa, multifieldqa_zh, dureader, trec"})
    prompt_templates: str | None = field(default=None, metadata={
        "metavar": "FILE.json",
        "help": "JSON object dataset -> template with {context} and {input} (LongBench's config/dataset2prompt.json): "
                "each record's prompt from its dataset's template; memory gets the template without {context}; a "
                "record whose dataset has none is refused"})
    prompt_template: str | None = field(default=None, metadata={
        "metavar": "TEXT", "help": "one template with {context} and {input} for every record (instead of "
                                   "--prompt_templates)"})
    skip_fulltext: bool = field(default=False, metadata={"help": "qa: no full-text baseline"})
    no_context: bool = field(default=False, metadata={
        "help": "qa: also the no-context baseline: the base model answering the prompt that follows the memory, "
                "without it (what the memory adds over the question alone)"})
    judge_file: str | None = field(default=None, metadata={
        "help": "qa: write a pairwise-judging JSONL (question, reference, both answers)"})


def _assign_templates(args: Any, records: list[QARecord]) -> None:
    if args.prompt_templates and args.prompt_template is not None:
        raise ConfigError("give --prompt_templates (per dataset) or --prompt_template (one for all), not both")
    if args.prompt_templates:
        assign_templates(records, load_templates(args.prompt_templates), f"--prompt_templates {args.prompt_templates}")
    elif args.prompt_template is not None:
        assign_templates(records, parse_template(args.prompt_template, "--prompt_template"), "--prompt_template")


def _prepare(args: Any) -> list[QARecord]:
    records = read_qa(args.data, args.limit, args.format, args.longbench_dataset)
    _assign_templates(args, records)
    if args.judge_file and args.skip_fulltext:
        raise ConfigError("--judge_file compares memory and full-text answers: it cannot be used with --skip_fulltext")
    return records


TASK = EvalTask(
    "qa", "answers from memory vs from the full text: ROUGE-L, token F1, exact match (PwC or LongBench JSONL)",
    reads_data=True, prepare=_prepare, flags=QAFlags,
    run=lambda model, s, args, records: run_qa(model, records, s, fulltext=not args.skip_fulltext,
                                               judge_file=args.judge_file, no_context=args.no_context))
