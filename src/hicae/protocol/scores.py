"""What the protocol adds to ``hicae.evaluation``'s AE scores: degenerate loops, perplexity groups, group summaries."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from ..evaluation import metrics

# the groups reported apart: English, modern Chinese, and classical Chinese (the hard case)
GROUPS = {"en": "English (all domains)", "zh": "modern Chinese (technical)", "zh_classical": "classical Chinese (hard case)"}

LOOP_NGRAM = 3
LOOP_SHARE = 0.3


def top_ngram_share(ids: Sequence[int], n: int = LOOP_NGRAM) -> float:
    """Share of the tokens covered by the most frequent n-gram's occurrences (counted as n tokens each, capped at 1).

    ``lighthouse = lighthouse = ...`` (3 tokens repeated) scores ~1.0; ordinary text of 64 tokens, whose
    3-grams rarely repeat, scores 3/64 ~ 0.05.
    """
    if len(ids) < 2 * n:
        return 0.0
    grams = Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
    return min(1.0, grams.most_common(1)[0][1] * n / len(ids))


def is_loop(ids: Sequence[int], threshold: float = LOOP_SHARE, n: int = LOOP_NGRAM) -> bool:
    """A degenerate reconstruction: its most frequent n-gram covers more than ``threshold`` of its tokens."""
    return top_ngram_share(ids, n) > threshold


def tercile_cuts(values: Sequence[float]) -> tuple[float, float]:
    """The two cut points splitting ``values`` into thirds (lower: v <= cut1; middle: v <= cut2; upper: the rest)."""
    v = sorted(values)
    if not v:
        return (float("nan"), float("nan"))
    return (v[(len(v) - 1) // 3], v[(2 * len(v) - 1) // 3])


TERCILES = ("low", "mid", "high")


def tercile_of(value: float, cuts: tuple[float, float]) -> str:
    return TERCILES[0] if value <= cuts[0] else TERCILES[1] if value <= cuts[1] else TERCILES[2]


def summarize(rows: list[dict[str, Any]], tokenize: str) -> dict[str, Any]:
    """One group's scores: corpus BLEU-4 (sacrebleu, ``tokenize``), token accuracy pooled over reference
    tokens, exact match, share of loops, mean base NLL of the texts."""
    if not rows:
        return {"n": 0}
    ref_tokens = sum(r["ref_tokens"] for r in rows)
    return {
        "n": len(rows),
        "bleu": metrics.corpus_bleu([r["prediction"] for r in rows], [r["reference"] for r in rows], tokenize),
        "sentence_bleu": sum(r["bleu"] for r in rows) / len(rows),
        "token_accuracy": sum(r["token_accuracy"] * r["ref_tokens"] for r in rows) / max(1, ref_tokens),
        "exact_match": sum(r["exact_match"] for r in rows) / len(rows),
        "loops": sum(r["loop"] for r in rows) / len(rows),
        "base_nll": sum(r["base_nll"] for r in rows) / len(rows),
    }
