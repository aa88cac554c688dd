"""How sure a long-document row is: Wilson intervals for an accuracy, exact paired tests between conditions.

Rows of 8-50 questions move 2-12 points per question, so "memory beats BM25" needs the questions both
conditions answered, side by side: only the discordant ones (one right, the other wrong) tell them apart.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of ``k`` right out of ``n`` (``(0, 1)`` when ``n == 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def sign_test_p(b: int, c: int) -> float:
    """Exact two-sided McNemar (sign) test: ``b`` questions only A got right, ``c`` only B.

    Under "A and B are equally good" each discordant question goes either way with probability 1/2, so the
    p-value is ``2 * P(X <= min(b, c))`` for ``X ~ Binomial(b + c, 1/2)``, at most 1.
    """
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def question_key(row: dict[str, Any]) -> tuple[Any, Any]:
    """What makes two rows the same question: the document and the question's text (its index where a
    row has no text), so that runs asking other questions of the same documents join without clashing."""
    return row["doc"], row.get("question", row.get("q"))


def paired(rows: Iterable[dict[str, Any]], a: str, b: str, key: str = "strict"
           ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{lang: {tokens: cell}}`` comparing condition ``a`` with ``b`` on the questions both answered.

    A question is ``question_key``; rows marked ``na`` are left out; right = the row's ``key`` score > 0. The cell holds ``n`` (questions both
    answered), ``both`` (both right), ``only_a``, ``only_b`` and ``p`` (``sign_test_p(only_a, only_b)``); and,
    where the rows have F1, the same sign test on it: ``f1_a`` (questions where A's F1 is the higher),
    ``f1_b`` and ``f1_p`` (ties left out).
    """
    score: dict[tuple[str, str, str], dict[tuple[Any, Any], tuple[bool, float | None]]] = {}
    for r in rows:
        if "na" in r or r["condition"] not in (a, b):
            continue
        where = (r["lang"], str(r["tokens"]), r["condition"])
        score.setdefault(where, {})[question_key(r)] = (r[key] > 0, r.get("f1"))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (lang, tokens, cond), by_q in sorted(score.items()):
        if cond != a or (lang, tokens, b) not in score:
            continue
        other = score[(lang, tokens, b)]
        qs = [q for q in by_q if q in other]
        both = sum(by_q[q][0] and other[q][0] for q in qs)
        only_a = sum(by_q[q][0] and not other[q][0] for q in qs)
        only_b = sum(other[q][0] and not by_q[q][0] for q in qs)
        cell = {"n": len(qs), "both": both, "only_a": only_a, "only_b": only_b, "p": sign_test_p(only_a, only_b)}
        f1s = [(by_q[q][1], other[q][1]) for q in qs if by_q[q][1] is not None and other[q][1] is not None]
        if f1s:
            fa, fb = sum(x > y for x, y in f1s), sum(y > x for x, y in f1s)
            cell.update(f1_a=fa, f1_b=fb, f1_p=sign_test_p(fa, fb))
        out.setdefault(lang, {})[tokens] = cell
    return out
