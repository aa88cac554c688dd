"""The baselines' contexts at a token budget ``N`` (the memory's slot count), and a first-token clock.

- ``last_n``: the last ``N`` token ids of the document (a reader with a window of ``N`` tokens
  that keeps the end of the stream);
- ``bm25``: the document cut into chunks of ``chunk_tokens`` token ids, ranked by BM25 against the
  question; the best chunks are taken until ``N`` tokens (the last one taken cut to what is left),
  then put back in document order, so the reader sees the passages as the document has them.
Both return token ids; the prompt holds their text.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import LogitsProcessor

from ..evaluation.bm25 import rank


def last_n_ids(ids: list[int], n: int) -> list[int]:
    return list(ids[-n:]) if n > 0 else []


def chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def bm25_ids(ids: list[int], question: str, n: int, chunk_tokens: int, tokenizer: Any) -> tuple[list[int], list[int]]:
    """The retrieved context's ids (at most ``n``) and the chunk indices taken, in document order."""
    parts = chunks(ids, chunk_tokens)
    order = rank([tokenizer.decode(p) for p in parts], question)
    taken: dict[int, list[int]] = {}
    left = n
    for i in order:
        if left <= 0:
            break
        taken[i] = parts[i][:left]
        left -= len(taken[i])
    keep = sorted(taken)
    return [t for i in keep for t in taken[i]], keep


class GreedyConfidence(LogitsProcessor):
    """Records, at each new token of a greedy one-row ``generate``, the log-probability of the token it
    picks (the largest of the log-softmaxed scores): ``mean(n)`` is the answer's mean over its ``n`` tokens
    and the end-of-turn that closed it. Put it last: it sees the scores the choice is made from."""

    def __init__(self) -> None:
        self.logprobs: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.logprobs.append(float(torch.log_softmax(scores[0].float(), -1).max()))  # scores: [1, V]
        return scores

    def mean(self, n: int) -> float:
        """Mean log-probability of the first ``n`` tokens and the stop after them, where it was generated."""
        taken = self.logprobs[: n + 1]
        return sum(taken) / len(taken) if taken else float("-inf")


class FirstTokenClock(LogitsProcessor):
    """Called by ``generate`` once per new token: the first call marks when the first token's logits
    exist (prefill done), i.e. the time to the first answer token."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = time.perf_counter() - self.start
        return scores
