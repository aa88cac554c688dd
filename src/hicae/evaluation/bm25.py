"""BM25 (Okapi) over a handful of passages: the retrieval baseline of the long-document QA benchmark.

Written here (``rank_bm25`` is not a dependency): the standard formula with Lucene's non-negative
idf, ``log(1 + (N - n + 0.5) / (n + 0.5))``, so a term found in most chunks never scores below 0.
Terms: English lower-cased letter/digit runs; Chinese has no spaces, so its characters and the
bigrams of neighbouring characters are terms (the usual segmentation-free choice), beside any
Latin words (commands, options) in the Chinese text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[^\W_{_CJK}]+|[{_CJK}]+")
_CJK_RUN = re.compile(rf"^[{_CJK}]+$")


def terms(text: str) -> list[str]:
    """Index terms of ``text``: lower-cased words; each run of CJK characters as characters and bigrams."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if _CJK_RUN.match(w):
            out += list(w) + [w[i : i + 2] for i in range(len(w) - 1)]
        else:
            out.append(w)
    return out


class BM25:
    """Scores of one query against fixed passages (already split into terms)."""

    def __init__(self, passages: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tf = [Counter(p) for p in passages]
        self.len = [len(p) for p in passages]
        self.avg = sum(self.len) / max(1, len(self.len)) or 1.0
        df = Counter(t for tf in self.tf for t in tf)
        n = len(self.tf)
        self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    def scores(self, query: Sequence[str]) -> list[float]:
        q = Counter(query)
        out = []
        for tf, dl in zip(self.tf, self.len):
            norm = self.k1 * (1 - self.b + self.b * dl / self.avg)
            out.append(sum(self.idf.get(t, 0.0) * qn * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t, qn in q.items() if t in tf))
        return out


def rank(passages: Sequence[str], query: str) -> list[int]:
    """Passage indices, best first; ties keep document order (so the ranking is deterministic)."""
    s = BM25([terms(p) for p in passages]).scores(terms(query))
    return sorted(range(len(passages)), key=lambda i: (-s[i], i))
