"""Wilson intervals, the exact sign test and the paired long-document comparison (hicae.longqa.stats)."""

from __future__ import annotations

import math

import pytest

from hicae.longqa.report import pairs, render_markdown, summarise
from hicae.longqa.stats import paired, sign_test_p, wilson


def test_wilson_known_values():
    # published 95% Wilson intervals (z = 1.96): 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634]
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson(4, 15)
    assert lo < 4 / 15 < hi and wilson(8, 30)[1] - wilson(8, 30)[0] < hi - lo  # more questions, narrower
    assert wilson(0, 0) == (0.0, 1.0)


def test_sign_test_exact():
    assert sign_test_p(0, 5) == pytest.approx(2 / 32)
    assert sign_test_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test_p(1, 9) == sign_test_p(9, 1)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    # against the binomial tail summed directly
    b, c = 2, 11
    tail = sum(math.comb(13, i) * 0.5 ** 13 for i in range(0, 3))
    assert sign_test_p(b, c) == pytest.approx(2 * tail)


def _row(doc, q, cond, right, lang="en", tokens=2000, **kw):
    return {"doc": doc, "q": q, "lang": lang, "tokens": tokens, "condition": cond, "contains": float(right),
            "strict": float(right), "answer": "x", "gold": "x",
            "f1": float(right), "ttft_s": 0.1, "answer_s": 0.2, "context_tokens": 512, "budget": 512, **kw}


def _rows():
    mem = {("d0", 0): 1, ("d0", 1): 1, ("d0", 2): 0, ("d1", 0): 1, ("d1", 1): 0}
    bm = {("d0", 0): 1, ("d0", 1): 0, ("d0", 2): 1, ("d1", 0): 0, ("d1", 1): 0}
    rows = [_row(d, q, "memory_flat", v, compress_s=1.0, prefix_s=0.5) for (d, q), v in mem.items()]
    rows += [_row(d, q, "bm25", v, gold_retrieved=True) for (d, q), v in bm.items()]
    rows.append(_row("d1", 2, "bm25", 1, gold_retrieved=True))  # memory has no such question: not paired
    rows.append({**_row("d1", 2, "memory_flat", 0, compress_s=1.0), "na": "over the window"})  # not asked
    return rows


def test_paired_counts_only_shared_questions():
    cell = paired(_rows(), "memory_flat", "bm25")["en"]["2000"]
    assert cell == {"n": 5, "both": 1, "only_a": 2, "only_b": 1, "p": sign_test_p(2, 1),
                    "f1_a": 2, "f1_b": 1, "f1_p": sign_test_p(2, 1)}
    # F1's own sign test: partial credit counts where strict sees two wrong answers; ties are left out
    rows = [{**r, "f1": 0.5} if (r["condition"], r["doc"], r["q"]) in (("memory_flat", "d1", 1), ("bm25", "d0", 1))
            else r for r in _rows()]
    cell = paired(rows, "memory_flat", "bm25")["en"]["2000"]
    assert (cell["only_a"], cell["only_b"], cell["f1_a"], cell["f1_b"]) == (2, 1, 3, 1)
    assert "f1_a" not in paired([{k: v for k, v in r.items() if k != "f1"} for r in _rows()], "memory_flat", "bm25")["en"]["2000"]
    # by default on the strict score: a memory answer right only by LongBench's contains does not count
    rows = [{**r, "strict": 0.0} if (r["condition"], r["doc"], r["q"]) == ("memory_flat", "d0", 1) else r for r in _rows()]
    assert paired(rows, "memory_flat", "bm25")["en"]["2000"]["only_a"] == 1
    assert paired(rows, "memory_flat", "bm25", key="contains")["en"]["2000"]["only_a"] == 2


def test_report_has_counts_intervals_and_pairs():
    rows = _rows() + [_row("z0", 0, "memory_flat", 0, lang="zh", compress_s=1.0, prefix_s=0.5),
                      _row("z0", 0, "none", 1, lang="zh")]
    summary = summarise(rows)
    cell = summary["en"]["2000"]["memory_flat"]
    assert (cell["n"], cell["na"], cell["strict_right"], cell["accuracy"]) == (5, 1, 3, 0.6)
    assert cell["strict_ci"] == pytest.approx(list(wilson(3, 5)))
    ps = pairs(rows)
    assert {(p["lang"], p["a"], p["b"]) for p in ps} == {("en", "memory_flat", "bm25"), ("zh", "memory_flat", "none")}
    md = render_markdown({"summary": summary, "pairs": ps})
    assert "| 2000 | memory (flat) | 5 | 0.60 | 3 (0.23-0.88) |" in md
    cells = {line.split(" | ")[1]: line.split(" | ") for line in md.splitlines() if line.startswith("| 2000 |")}
    assert cells["memory (flat)"][9] == "512" and cells["no context"][9] == "—"  # N limits no-context nothing
    assert "| en | 2000 | memory (flat) | BM25 chunks | 5 | 1 | 2 | 1 | 1.00 | 2 / 1 | 1.00 |" in md
    assert "| zh | 2000 | memory (flat) | no context | 1 | 0 | 0 | 1 | 1.00 |" in md


def test_report_from_stored_rows(tmp_path):
    """experiments/long_qa_report.py's path: rows of two runs joined, rescored strict, written; a bad line
    names its file and line; the same question in two runs is refused."""
    import json

    from hicae.errors import DataError
    from hicae.longqa.report import join_rows, read_rows, write_report

    rows = _rows()
    mem = [r for r in rows if r["condition"] == "memory_flat"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # rows of a run before the strict score: right by LongBench's contains only ("of the" for "of a")
    old = [{**{k: v for k, v in r.items() if k != "strict"}, "answer": "of the", "gold": "of a"} for r in mem]
    a.write_text("".join(json.dumps(r) + "\n" for r in old))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows if r["condition"] == "bm25"))
    joined = join_rows([a, b])
    assert len(joined) == len(rows)
    report = write_report(joined, tmp_path / "out", "cmd")
    cell = report["summary"]["en"]["2000"]["memory_flat"]
    assert (cell["accuracy"], cell["strict_right"]) == (0.6, 0)  # rescored: none right strictly
    assert "## Paired on the same questions" in (tmp_path / "out" / "long_qa.md").read_text()
    with pytest.raises(DataError, match="also in"):
        join_rows([a, a])
    # one condition of a run only (PATH:bm25 in experiments/long_qa_report.py): no clash with the other's
    both = tmp_path / "both.jsonl"
    both.write_text("".join(json.dumps(r) + "\n" for r in rows))
    picked = join_rows([a, both], {both: {"bm25"}})
    assert sorted(r["condition"] for r in picked) == sorted(r["condition"] for r in rows)
    # other questions of the same documents (another --questions) are more questions, not a clash
    asked = [{**r, "question": f"which words follow cue {r['q']}?"} for r in mem]
    other = [{**r, "question": f"which words follow another cue {r['q']}?"} for r in mem]
    c, d = tmp_path / "c.jsonl", tmp_path / "d.jsonl"
    c.write_text("".join(json.dumps(r) + "\n" for r in asked))
    d.write_text("".join(json.dumps(r) + "\n" for r in other))
    assert len(join_rows([c, d])) == 2 * len(mem)
    with pytest.raises(DataError, match="also in"):
        join_rows([c, c])
    repeats: list[str] = []
    assert join_rows([c, d, c], repeats=repeats) == join_rows([c, d]) and len(repeats) == len(mem)
    assert all("repeats one of" in x and "c.jsonl" in x for x in repeats)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc": 1}\nnot json\n{"doc": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_rows(bad)
    bad.write_text('{"doc": 1}\n{"doc": 2, "cut')  # an interrupted last write: dropped
    assert read_rows(bad) == [{"doc": 1}]


def test_pairs_pool_the_lengths_of_a_language():
    extra = {"memory_flat": {"compress_s": 1.0}, "bm25": {"gold_retrieved": True}}
    rows = _rows() + [_row(d, q, c, v, tokens=8000, **extra[c])
                      for (d, q, c, v) in (("e0", 0, "memory_flat", 1), ("e0", 0, "bm25", 0),
                                           ("e0", 1, "memory_flat", 1), ("e0", 1, "bm25", 0))]
    ps = {(p["tokens"], p["a"], p["b"]): p for p in pairs(rows)}
    assert set(ps) == {("2000", "memory_flat", "bm25"), ("8000", "memory_flat", "bm25"), ("all", "memory_flat", "bm25")}
    two, eight, pooled = (ps[(t, "memory_flat", "bm25")] for t in ("2000", "8000", "all"))
    for k in ("n", "both", "only_a", "only_b", "f1_a", "f1_b"):
        assert pooled[k] == two[k] + eight[k]
    assert pooled["p"] == sign_test_p(4, 1) and "| en | all | memory (flat) | BM25 chunks | 7 |" in render_markdown(
        {"summary": summarise(rows), "pairs": pairs(rows)})


def test_a_tagged_run_stands_beside_the_same_condition_and_is_paired(tmp_path):
    """Two checkpoints' rows of one condition on the same questions (long_qa_report.py's PATH@TAG): the
    second's renamed COND@TAG, reported in its own row after the first and paired with it and the baselines."""
    import importlib.util
    import json
    from pathlib import Path

    from hicae.errors import DataError
    from hicae.longqa.report import join_rows, write_report

    rows = _rows()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the new checkpoint: right on every question the first got wrong, wrong where it was right
    b.write_text("".join(json.dumps({**r, "strict": 1.0 - r["strict"], "contains": 1.0 - r["contains"]}) + "\n"
                         for r in rows if r["condition"] == "memory_flat" and "na" not in r))
    with pytest.raises(DataError, match="also in"):
        join_rows([a, b])
    joined = join_rows([a, b], tags={b: "ft"})
    assert sum(r["condition"] == "memory_flat@ft" for r in joined) == 5
    report = write_report(joined, tmp_path / "out", "cmd")
    assert report["summary"]["en"]["2000"]["memory_flat@ft"]["strict_right"] == 2
    got = {(p["a"], p["b"]): (p["only_a"], p["only_b"]) for p in report["pairs"]}
    assert got[("memory_flat", "memory_flat@ft")] == (3, 2)
    assert got[("memory_flat@ft", "bm25")] == (1, 1) and ("memory_flat@ft", "memory_flat") not in got
    md = (tmp_path / "out" / "long_qa.md").read_text()
    assert md.index("| memory (flat) |") < md.index("| memory (flat) (ft) |") < md.index("| BM25 chunks |")
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({**rows[0], "condition": "memory_magic"}) + "\n")
    with pytest.raises(DataError, match="unknown condition 'memory_magic'"):
        join_rows([c])
    spec = importlib.util.spec_from_file_location("lqr", Path(__file__).resolve().parents[2] / "experiments" / "long_qa_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_rows_spec("o/r.jsonl") == (Path("o/r.jsonl"), None, None)
    assert mod.parse_rows_spec("o/r.jsonl@ft") == (Path("o/r.jsonl"), None, "ft")
    assert mod.parse_rows_spec("o/r.jsonl:full+none@ft") == (Path("o/r.jsonl"), {"full", "none"}, "ft")
    assert mod.parse_rows_spec("o@x/r.jsonl:bm25") == (Path("o@x/r.jsonl"), {"bm25"}, None)
