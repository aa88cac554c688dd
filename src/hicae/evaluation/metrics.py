"""Text metrics of the evaluation suite: BLEU-4 (sacrebleu; Chinese with its ``zh`` tokeniser), exact match, token accuracy, ROUGE-L, token F1.

QA metrics compare *words*: the text lower-cased, cut into runs of letters and digits (punctuation
dropped), each CJK character a word of its own. Exact match and F1 also drop the English articles
(a, an, the), as SQuAD's scorer does; ROUGE-L keeps them (as rouge-score does). Scores are in
[0, 1] except BLEU, which is on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from ..errors import ConfigError

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_ARTICLES = frozenset({"a", "an", "the"})
_DIGITS = re.compile(r"\d+")


def words(text: str) -> list[str]:
    """Lower-cased words: runs of letters/digits; a CJK character is one word; punctuation is dropped."""
    return _WORD.findall(text.lower())


def answer_words(text: str) -> list[str]:
    """``words`` without articles (SQuAD-style answer normalisation)."""
    return [w for w in words(text) if w not in _ARTICLES]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) over words: 2PR / (P + R) with P = LCS/|pred|, R = LCS/|ref|."""
    p, r = words(prediction), words(reference)
    if not p or not r:
        return float(p == r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def bag_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of two bags of tokens (0 when they share none)."""
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(prediction), common / len(reference)
    return 2 * prec * rec / (prec + rec)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: overlap of the two bags of (article-free) words."""
    p, r = answer_words(prediction), answer_words(reference)
    if not p or not r:
        return float(p == r)
    return bag_f1(p, r)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised words are equal (case, punctuation, articles and spacing ignored)."""
    return float(answer_words(prediction) == answer_words(reference))


def best_over(metric, prediction: str, references: Sequence[str]) -> float:
    """The best score of ``prediction`` against any of several references."""
    return max(metric(prediction, r) for r in references)


def qa_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """ROUGE-L, token F1 and exact match, each the maximum over the references."""
    return {
        "rouge_l": best_over(rouge_l, prediction, references),
        "f1": best_over(token_f1, prediction, references),
        "exact_match": best_over(exact_match, prediction, references),
    }


def token_accuracy(prediction: Sequence[int], reference: Sequence[int]) -> float:
    """Share of reference positions whose token the prediction reproduces at the same position."""
    if not reference:
        return float(not prediction)
    return sum(1 for i, t in enumerate(reference) if i < len(prediction) and prediction[i] == t) / len(reference)


def contains_digits(answer: str, digits: str) -> float:
    """Retrieval accuracy: 1.0 when ``digits`` occurs in the answer as a whole number (not inside a longer one)."""
    return float(digits in _DIGITS.findall(answer))


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(
            "BLEU needs the sacrebleu package: pip install 'hicae[eval]' (or pip install sacrebleu)"
        ) from None
    return sacrebleu


def require_bleu() -> None:
    """Fail early (before loading a model) when sacrebleu is missing."""
    _sacrebleu()


_CJK_CHAR = re.compile(rf"[{_CJK}]")
BLEU_TOKENIZERS = ("auto", "13a", "zh", "intl", "char", "none")


def script_of(text: str) -> str:
    """``zh`` for a text holding CJK characters, else ``en`` (how reports split languages)."""
    return "zh" if _CJK_CHAR.search(text) else "en"


def bleu_tokenizer(texts: Sequence[str], tokenize: str = "auto") -> str:
    """sacrebleu's tokeniser for ``texts``: ``auto`` is ``zh`` when any holds CJK, else ``13a``.

    ``13a`` keeps a run of Chinese characters as one token, so a Chinese reconstruction that
    differs in one character would score as if all were wrong; ``zh`` splits each character.
    """
    if tokenize not in BLEU_TOKENIZERS:
        raise ConfigError(f"unknown BLEU tokenisation {tokenize!r} (one of {', '.join(BLEU_TOKENIZERS)})")
    if tokenize != "auto":
        return tokenize
    return "zh" if any(_CJK_CHAR.search(t) for t in texts) else "13a"


def sentence_bleu(prediction: str, reference: str, tokenize: str = "auto") -> float:
    """BLEU-4 of one sentence (exponential smoothing), 0-100; tokenisation per ``bleu_tokenizer``."""
    tok = bleu_tokenizer([reference], tokenize)
    return float(_sacrebleu().sentence_bleu(prediction, [reference], tokenize=tok).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "auto") -> float:
    """Corpus BLEU-4 (no smoothing), 0-100; n-gram counts pooled over texts; tokenisation per ``bleu_tokenizer``."""
    if not predictions:
        return 0.0
    tok = bleu_tokenizer(references, tokenize)
    return float(_sacrebleu().corpus_bleu(list(predictions), [list(references)], tokenize=tok).score)
