"""Scoring a long-document answer against its gold span (2 English words / 4 Chinese characters).

``contains`` is the benchmark's accuracy since issue 18 began: LongBench's normalisation, then a substring
test. Two of its steps are loose for spans this short: the normalisation drops articles ("of a" -> "of",
"to the" -> "to") and the test ignores word boundaries ("of" is inside "often"), so a one-word remainder
is found in many wrong answers. ``strict`` keeps the articles and matches whole words; Chinese keeps the
character test (no word boundaries to respect, no articles).
"""

from __future__ import annotations

from ..evaluation import longbench


def contains(answer: str, gold: str, lang: str) -> float:
    """1.0 when the normalised gold span is inside the normalised answer (LongBench's normalisations)."""
    norm = longbench.normalize_zh_answer if lang == "zh" else longbench.normalize_answer
    g = norm(gold)
    return float(bool(g) and g in norm(answer))


def strict(answer: str, gold: str, lang: str) -> float:
    """1.0 when every word of the gold span, articles included, appears in the answer as whole words in
    the same order and adjacent (lower case, ASCII punctuation removed); Chinese: ``contains``."""
    if lang == "zh":
        return contains(answer, gold, lang)
    g, a = longbench.lower_no_punct(gold).split(), longbench.lower_no_punct(answer).split()
    return float(bool(g) and any(a[i:i + len(g)] == g for i in range(len(a) - len(g) + 1)))


def with_strict(rows: list[dict]) -> list[dict]:
    """Rows with ``strict`` filled in where a run predating it left it out (from their answer and gold)."""
    return [r if "strict" in r or "na" in r else {**r, "strict": strict(r["answer"], r["gold"], r["lang"])}
            for r in rows]


def f1(answer: str, gold: str, lang: str) -> float:
    return (longbench.qa_f1_zh if lang == "zh" else longbench.qa_f1)(answer, gold)
