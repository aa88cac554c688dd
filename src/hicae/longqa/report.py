"""The long-document QA tables: per language, length and condition; n/a where a condition cannot run."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io.fileio import write_text_atomic
from .settings import COMPRESSED, CONDITIONS, DECODED, EACH, PICKED, RETRIEVED
from .scoring import with_strict
from .stats import paired, question_key, wilson

LABELS = {"memory_flat": "memory (flat)", "memory_hier": "memory (hierarchical)",
          RETRIEVED: "memory, BM25-picked segments",
          EACH: "memory, BM25-picked segments one by one", DECODED: "memory read back + BM25", "full": "full text",
          "last_n": "last N tokens", "bm25": "BM25 chunks", "none": "no context"}


def base_condition(cond: str) -> str:
    """``memory_retrieved@run2`` -> ``memory_retrieved``: a condition tagged by the run it came from (another
    checkpoint's rows of the same condition, joined beside the first's; ``join_rows``' ``tags``)."""
    return cond.partition("@")[0]


def label(cond: str) -> str:
    base, _, tag = cond.partition("@")
    return LABELS[base] + (f" ({tag})" if tag else "")


def ordered(conds: Any) -> list[str]:
    """Conditions in the report's order (``CONDITIONS``), a tagged one after its untagged base."""
    return sorted(conds, key=lambda c: (CONDITIONS.index(base_condition(c)), c))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A run's ``rows.jsonl`` (none if absent). A cut last line (an interrupted write) is dropped, so that
    its document x condition is redone; any other bad line is an error naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                break
            raise DataError(f"{path}:{i}: not a JSON row ({e.msg}); remove or fix that line") from None
    return out


def join_rows(paths: list[Path], only: dict[Path, set[str]] | None = None,
              repeats: list[str] | None = None, tags: dict[Path, str] | None = None) -> list[dict[str, Any]]:
    """The rows of several runs as one table; ``only[path]``: the conditions taken from that run (all if
    absent). The same question (document, question text, condition) twice is an error: two runs' documents
    with the same id must be the same document (same seed and sizes); other questions of it (another
    ``--questions``) join as more questions. With ``repeats`` (a list), a question a later run asked again
    is kept once (the first run's row) and named in ``repeats`` instead: other question sets of the same
    documents can draw the same cue. ``tags[path]``: that run's conditions are renamed ``COND@TAG`` (after
    ``only``), so that two checkpoints' rows of one condition stand side by side and are paired."""
    seen: dict[tuple[Any, ...], Path] = {}
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such rows file (experiments/long_qa.py writes rows.jsonl into --out_dir)")
        keep = (only or {}).get(path)
        for r in read_rows(path):
            if keep is not None and r["condition"] not in keep:
                continue
            if base_condition(r["condition"]) not in CONDITIONS:
                raise DataError(f"{path}: {r['doc']} question {r.get('q')}: unknown condition {r['condition']!r}")
            if (tags or {}).get(path):
                r = {**r, "condition": f"{base_condition(r['condition'])}@{tags[path]}"}
            key = (*question_key(r), r["condition"])
            if key in seen and repeats is not None:
                repeats.append(f"{path}: {r['doc']} question {r.get('q')} {r['condition']} repeats one of {seen[key]}")
                continue
            if key in seen:
                raise DataError(f"{path}: {r['doc']} question {r.get('q')} {r['condition']} is also in {seen[key]}; "
                                "join runs of different documents or conditions (PATH:COND+COND takes some)")
            seen[key] = path
            rows.append(r)
    return rows


def write_report(rows: list[dict[str, Any]], out: Path, command: str | None, settings: dict[str, Any] | None = None,
                 notes: list[str] | None = None, documents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``long_qa.json`` and ``long_qa.md`` in ``out`` from ``rows``: the summary, the pairs, and what the
    run knows (its settings, notes and documents) where given."""
    import torch

    report = {"command": command, "settings": settings, "notes": list(notes or []), "documents": documents or [],
              "summary": summarise(rows), "pairs": pairs(rows),
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "platform": platform.platform()}}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "long_qa.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "long_qa.md", render_markdown(report))
    return report


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{lang: {tokens: {condition: cell}}}``; a cell holds n, accuracy (LongBench's contains), strict (its
    mean, ``strict_right`` the count, ``strict_ci`` the count's 95% Wilson interval as a share), F1, mean
    times, context tokens, the memory's compress time, and ``na`` (how many questions could not be asked)."""
    out: dict[str, Any] = {}
    for r in with_strict(rows):
        cell = out.setdefault(r["lang"], {}).setdefault(str(r["tokens"]), {}).setdefault(r["condition"], {"rows": []})
        cell["rows"].append(r)
    for lang in out.values():
        for by_cond in lang.values():
            for cond, cell in by_cond.items():
                rs = cell.pop("rows")
                ok = [r for r in rs if "na" not in r]
                right = sum(r["strict"] > 0 for r in ok)
                cell.update(n=len(ok), na=len(rs) - len(ok), accuracy=_mean([r["contains"] for r in ok]),
                            strict=_mean([r["strict"] for r in ok]), strict_right=right,
                            strict_ci=list(wilson(right, len(ok))),
                            f1=_mean([r["f1"] for r in ok]), ttft_s=_mean([r["ttft_s"] for r in ok]),
                            answer_s=_mean([r["answer_s"] for r in ok]),
                            context_tokens=_mean([r["context_tokens"] for r in ok]),
                            budget=_mean([r["budget"] for r in rs]))
                if base_condition(cond) in COMPRESSED:
                    per_doc = {r["doc"]: r["compress_s"] for r in ok}
                    cell["compress_s"] = _mean(list(per_doc.values()))
                    prefix = {r["doc"]: r["prefix_s"] for r in ok if "prefix_s" in r}
                    cell["prefix_s"] = _mean(list(prefix.values()))
                if base_condition(cond) in ("bm25", *PICKED):
                    cell["gold_retrieved"] = _mean([float(r["gold_retrieved"]) for r in ok])
                if rs and rs[0].get("na"):
                    cell["na_reason"] = rs[0]["na"]
    return out


def pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each memory condition against each other condition that ran, on the same questions: one entry per
    language, length and pair (``paired``'s cell plus ``lang``, ``tokens``, ``a``, ``b``); where a pair was
    asked at several lengths, one more with ``tokens`` "all": their questions pooled (each is its own)."""
    rows = with_strict(rows)
    pooled = [{**r, "tokens": "all"} for r in rows]
    ran = {r["condition"] for r in rows}
    mine = [c for c in ordered(ran) if base_condition(c) in COMPRESSED]
    out = []
    for i, a in enumerate(mine):
        for b in [c for c in ordered(ran) if c not in mine[:i + 1]]:  # each pair once
            together = paired(pooled, a, b)
            for lang, by_len in paired(rows, a, b).items():
                for tokens, cell in sorted(by_len.items(), key=lambda kv: int(kv[0])):
                    out.append({"lang": lang, "tokens": tokens, "a": a, "b": b, **cell})
                if len(by_len) > 1:
                    out.append({"lang": lang, "tokens": "all", "a": a, "b": b, **together[lang]["all"]})
    return out


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _n(cond: str, cell: dict[str, Any]) -> str:
    """The N column: the budget of the conditions it limits (a memory's own size, last N, BM25); none for
    the full text and no context, which read what they read whatever N is."""
    return "—" if base_condition(cond) in ("full", "none") else _fmt(cell["budget"], ".0f")


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Long-document QA", "",
             "Cloze questions (the words that follow a quoted cue) spread evenly over each held-out document; "
             "accuracy = the gold span is contained in the answer after LongBench's normalisation; F1 = LongBench's "
             "qa_f1 (qa_f1_zh for Chinese). Same questions and greedy decoding for every condition. N (the budget "
             "of last N tokens and BM25) = the largest memory slot count on that document. Times: seconds, one "
             "question at a time; TTFT = time to the first answer token; memory conditions compress each document "
             "once (compress s) and run the decoder over the memory once (prefix s: its KV cache), then answer every "
             "question from it. Memory read back + BM25: the flat memory's segments reconstructed once ([AE]; "
             "prefix s is that read-back), then BM25 over that text within the memory's slot count and the plain "
             "base answering: what the memory holds, apart from the decoder's own lookup. Memory, BM25-picked segments: "
             "BM25 ranks the memory's segments (by the document's text or by the memory read back) and the decoder "
             "reads only the best segments' slots, up to its N (the slots it reads; the whole memory is larger). Strict: the gold's words, "
             "articles kept, as whole adjacent words of the answer (LongBench's normalisation drops articles, so a "
             "gold 'of a' becomes 'of', and its substring test finds that inside 'often'); Chinese: as accuracy. "
             "Strict right: how many, with the 95% Wilson interval of that share.", ""]
    if report.get("command"):
        lines += ["```", report["command"], "```", ""]
    reasons: list[str] = []
    for lang, by_len in report["summary"].items():
        lines += [f"## {lang}", "", "| tokens | condition | n | accuracy | strict right (95% CI) | F1 | TTFT s | s/answer | "
                  "context tokens | N | compress s | prefix s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for tokens in sorted(by_len, key=int):
            for cond in ordered(by_len[tokens]):
                c = by_len[tokens][cond]
                if c["n"] == 0:
                    reasons.append(f"{lang}, {tokens} tokens, {label(cond)}: n/a: {c.get('na_reason', '')}")
                    lines.append(f"| {tokens} | {label(cond)} | 0 | n/a | | n/a | | | | {_n(cond, c)} | | |")
                    continue
                lo, hi = c["strict_ci"]
                lines.append(f"| {tokens} | {label(cond)} | {c['n']} | {_fmt(c['accuracy'])} | "
                             f"{c['strict_right']} ({lo:.2f}-{hi:.2f}) | {_fmt(c['f1'])} | "
                             f"{_fmt(c['ttft_s'])} | {_fmt(c['answer_s'])} | {_fmt(c['context_tokens'], '.0f')} | "
                             f"{_n(cond, c)} | {_fmt(c.get('compress_s'))} | {_fmt(c.get('prefix_s'))} |")
        lines.append("")
    if report.get("pairs"):
        lines += ["## Paired on the same questions", "",
                  "Questions both conditions answered, scored strict; only A / only B: right in one, wrong in the other; p: exact "
                  "two-sided sign (McNemar) test on those, the chance of a split at least this uneven if A and B "
                  "were equally good. F1 higher in A / in B: the same test on each question's F1 (ties left out).", "",
                  "| lang | tokens | A | B | n | both right | only A | only B | p | F1 higher in A / in B | F1 p |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['lang']} | {p['tokens']} | {label(p['a'])} | {label(p['b'])} | {p['n']} | {p['both']} | "
                  f"{p['only_a']} | {p['only_b']} | {p['p']:.2f} | "
                  + (f"{p['f1_a']} / {p['f1_b']} | {p['f1_p']:.2f} |" if "f1_a" in p else "| |")
                  for p in report["pairs"]]
        lines.append("")
    notes = list(report.get("notes") or []) + reasons
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
