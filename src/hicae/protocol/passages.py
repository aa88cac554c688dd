"""Cutting documents into token-sized pieces: training passages and held-out evaluation texts.

Both count tokens with the real tokenizer (``count``: texts -> token counts, no special tokens).

- Training passages (``train_passages``): up to ``max_tokens`` tokens each, cut only at paragraph,
  sentence (``.!?`` / ``。！？；``) or whitespace boundaries (a run of Chinese without any of them is
  cut by characters); passages under ``min_tokens`` are dropped. One document never shares a
  passage with another.
- Evaluation texts (``eval_texts``): exactly ``n_tokens`` tokens each (the head of a window that
  starts at a paragraph start), so every text gets the same number of memory slots; at most
  ``per_doc`` texts per document, documents in a seeded order, so a domain's texts come from many
  documents. Documents shorter than ``n_tokens`` (fortunes, short poems) are packed, consecutive in
  that order and joined by a blank line, into one text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .sources import Document

Counter = Callable[[list[str]], list[int]]

_PARA = re.compile(r"\n[ \t]*\n\s*")
_SENT_END = re.compile(r"[.!?]+[\"')\]]*\s+|[。！？；]+[」』”’）]*\s*|\n")
_SPACE = re.compile(r"\s+")
_PARA_START = re.compile(r"(?:^|\n[ \t]*\n)\s*(\S)")


def token_counter(tokenizer: Any) -> Counter:
    def count(texts: list[str]) -> list[int]:
        return [len(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []
    return count


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in _PARA.split(text) if p.strip()]


def _cut(text: str, pattern: re.Pattern) -> list[str]:
    """``text`` cut after each match of ``pattern``; the pieces concatenate back to ``text``."""
    out, prev = [], 0
    for m in pattern.finditer(text):
        if m.end() > prev and m.end() < len(text):
            out.append(text[prev : m.end()])
            prev = m.end()
    out.append(text[prev:])
    return [p for p in out if p]


def fit_pieces(text: str, count: Counter, max_tokens: int) -> list[str]:
    """``text`` as pieces of at most ``max_tokens`` tokens: whole if it fits, else cut at sentence
    ends, then at whitespace, then (no whitespace left: Chinese) into halves by characters."""
    if count([text])[0] <= max_tokens:
        return [text]
    for pattern in (_SENT_END, _SPACE):
        parts = _cut(text, pattern)
        if len(parts) > 1:
            break
    else:
        if len(text) < 2:  # one character over the budget: nothing to cut
            return [text]
        parts = [text[: len(text) // 2], text[len(text) // 2 :]]
    return pack(parts, count, max_tokens, joiner="")


def pack(parts: Sequence[str], count: Counter, max_tokens: int, joiner: str) -> list[str]:
    """Greedy: consecutive ``parts`` joined by ``joiner`` while the summed counts fit ``max_tokens``.

    A join may merge two tokens or add one; the sum is the budget, so a passage can be a token
    off in either direction (``train_passages`` reports exact counts).
    """
    out: list[str] = []
    cur: list[str] = []
    used = 0
    counts = count(list(parts))
    for p, c in zip(parts, counts):
        if c > max_tokens:
            if cur:
                out.append(joiner.join(cur))
                cur, used = [], 0
            out += fit_pieces(p, count, max_tokens)
            continue
        extra = c + (1 if cur and joiner else 0)
        if cur and used + extra > max_tokens:
            out.append(joiner.join(cur))
            cur, used, extra = [], 0, c
        cur.append(p)
        used += extra
    if cur:
        out.append(joiner.join(cur))
    return out


def document_passages(text: str, count: Counter, max_tokens: int, min_tokens: int) -> list[tuple[str, int]]:
    """One document's training passages with their exact token counts (paragraphs packed, long
    ones cut; passages under ``min_tokens`` dropped)."""
    out = [p.strip() for p in pack(paragraphs(text), count, max_tokens, joiner="\n\n")]
    out = [p for p in out if p]
    exact = [pc for p, c in zip(out, count(out)) for pc in ([(p, c)] if c <= max_tokens else _recut(p, c, count, max_tokens))]
    return [(p, c) for p, c in exact if c >= min_tokens]


def _recut(text: str, n: int, count: Counter, max_tokens: int, depth: int = 0) -> list[tuple[str, int]]:
    """A packed passage whose exact count ``n`` overshot (joins can merge differently than the
    pieces' counts say): cut again under a budget tightened by the overshoot; given up after a few tries."""
    if n <= max_tokens:
        return [(text, n)]
    if depth >= 4:
        return []
    parts = [q.strip() for q in fit_pieces(text, count, max(1, max_tokens - (n - max_tokens))) if q.strip()]
    if len(parts) < 2 and count(parts) == [n]:
        return []  # nothing left to cut at
    return [pc for q, c in zip(parts, count(parts)) for pc in _recut(q, c, count, max_tokens, depth + 1)]


@dataclass
class EvalText:
    domain: str
    doc_ids: list[str]  # one document, or several short ones packed
    text: str
    base_nll: float | None = None  # the base model's mean NLL per token of the text read plainly
    extra: dict = field(default_factory=dict)


def _head(tokenizer: Any, ids: list[int], n: int) -> str:
    """The first ``n`` tokens as text; a character cut in the middle of its bytes is dropped."""
    return tokenizer.decode(ids[:n], skip_special_tokens=True).rstrip("\ufffd")


def eval_texts(docs: list[Document], tokenizer: Any, n_tokens: int, n: int, seed: int, per_doc: int = 2) -> list[EvalText]:
    """Up to ``n`` held-out texts of ``n_tokens`` tokens from ``docs`` (one domain), deterministically."""
    order = sorted(docs, key=lambda d: d.doc_id)
    random.Random(seed).shuffle(order)
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    window_chars = 16 * n_tokens  # enough text for n_tokens tokens (a token is rarely 16 characters)
    out: list[EvalText] = []
    packed: list[Document] = []
    for d in order:
        if len(out) >= n:
            break
        starts = [m.start(1) for m in _PARA_START.finditer(d.text)]  # each paragraph's first character
        pos = taken = 0
        for s in starts:
            if taken >= per_doc or len(out) >= n:
                break
            if s < pos:
                continue
            ids = enc(d.text[s : s + window_chars])
            if len(ids) < n_tokens:
                break
            text = _head(tokenizer, ids, n_tokens)
            out.append(EvalText(d.domain, [d.doc_id], text))
            pos, taken = s + len(text), taken + 1
        if taken == 0 and len(enc(d.text[:window_chars])) < n_tokens:
            packed.append(d)
            joined = "\n\n".join(p.text for p in packed)
            ids = enc(joined[:window_chars])
            if len(ids) >= n_tokens:
                out.append(EvalText(d.domain, [p.doc_id for p in packed], _head(tokenizer, ids, n_tokens)))
                packed = []
    return out[:n]
