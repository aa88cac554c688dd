"""Rewrite the long-document QA report from stored rows, with no model: after a scoring change, or to
join several runs' rows (other lengths, languages or conditions on the same seed) into one table.

    .venv/bin/python experiments/long_qa_report.py --rows outputs/lq19/en2k/rows.jsonl,outputs/lq19/en8k/rows.jsonl \
        --out_dir outputs/lq19/all     # -> long_qa.json, long_qa.md (the strict score filled in for old rows)

A rows file given as ``PATH:full+none`` gives only those conditions (e.g. the budget-free ones of a run
whose baselines had another N); ``PATH@TAG`` (or ``PATH:COND@TAG``) renames that run's conditions
``COND@TAG``, so that another checkpoint's rows of the same condition on the same questions stand beside
the first's and are paired with them:

    --rows outputs/lq20/en2k-r64/rows.jsonl,outputs/pick1/en2k/rows.jsonl:memory_retrieved@pick1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def parse_rows_spec(spec: str) -> tuple[Path, set[str] | None, str | None]:
    """``PATH[:COND+COND][@TAG]`` -> (path, the conditions taken or None for all, the tag or None)."""
    head, at, tag = spec.rpartition("@")
    if not at or "/" in tag:  # no tag (an @ inside a folder name is not one)
        head, tag = spec, ""
    path, _, conds = head.partition(":")
    return Path(path), set(conds.split("+")) if conds else None, tag or None


def main(argv: list[str] | None = None) -> int:
    from hicae.errors import HicaeError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", required=True, help="comma-separated rows.jsonl files of experiments/long_qa.py runs; "
                                                 "PATH:COND+COND takes only those conditions from PATH; "
                                                 "PATH@TAG (or PATH:COND+COND@TAG) names its conditions COND@TAG")
    p.add_argument("--out_dir", required=True, help="where long_qa.json and long_qa.md go")
    p.add_argument("--skip_repeats", action="store_true", help="a question asked again by a later run (other "
                   "question sets of the same documents can draw the same cue) is kept once, noted in the "
                   "report, instead of refused")
    a = p.parse_args(argv)
    try:
        from hicae.longqa.report import join_rows, write_report

        specs = [parse_rows_spec(x) for x in a.rows.split(",") if x]
        only = {path: conds for path, conds, _ in specs if conds}
        tags = {path: tag for path, _, tag in specs if tag}
        repeats: list[str] | None = [] if a.skip_repeats else None
        rows = join_rows([path for path, _, _ in specs], only, repeats, tags)
        command = "experiments/long_qa_report.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
        notes = [f"{len(repeats)} repeated questions kept once: " + "; ".join(repeats)] if repeats else None
        report = write_report(rows, Path(a.out_dir), command, notes=notes)
    except HicaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"rows": len(rows), "out_dir": a.out_dir,
                      "languages": sorted(report["summary"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
