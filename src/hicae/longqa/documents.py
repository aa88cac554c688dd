"""Long held-out documents: held-out protocol documents of one language, concatenated to a token length.

A long document of ``n`` tokens is the held-out documents of the first listed domain, in a seeded
order, joined by blank lines until ``n`` tokens are reached, then cut to exactly ``n`` tokens (its
head, a character cut in its bytes dropped). When a domain has too few held-out tokens the next
listed domain continues it; a language whose domains together fall short gets no document of that
length (the report says so). Different documents of one length start at different places of the order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LongDoc:
    id: str  # "<lang>-<tokens>-<j>"
    lang: str
    tokens: int  # the requested length
    text: str
    sources: list[str] = field(default_factory=list)  # "domain:doc_id" of the documents it is made of


def parse_lengths(spec: str) -> list[int]:
    """``"2k,8k,32k,100k"`` -> token counts (k = 1000: the lengths are sizes to report, not powers of two)."""
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part:
            out.append(int(float(part[:-1]) * 1000) if part.endswith("k") else int(part))
    if not out or min(out) < 1:
        raise ValueError(f"bad --lengths {spec!r}: comma-separated token counts such as 2k,8k")
    return out


def build_long_docs(docs: list[tuple[str, str]], lang: str, lengths: list[int], per_length: int, tokenizer: Any,
                    seed: int) -> tuple[list[LongDoc], list[str]]:
    """``docs``: ``(source id, text)`` in domain order. Returns the long documents and notes on lengths not reached."""
    if not docs:
        return [], [f"{lang}: no held-out documents"]
    counts = [len(x) for x in tokenizer([t for _, t in docs], add_special_tokens=False)["input_ids"]]
    total = sum(counts) + 2 * len(docs)
    out, notes = [], []
    for n in lengths:
        if total < n:
            notes.append(f"{lang}: {n} tokens asked, the held-out documents hold about {total}: no document of this length")
            continue
        for j in range(per_length):
            # each document its own seeded start; the order within a domain stays seeded and fixed
            start = random.Random(f"{seed}:{lang}:{n}:{j}").randrange(len(docs))
            picked, have, i = [], 0, start
            while have < n + 16 and len(picked) < len(docs):
                picked.append(i)
                have += counts[i] + 2
                i = (i + 1) % len(docs)
            ids = tokenizer("\n\n".join(docs[k][1] for k in picked), add_special_tokens=False)["input_ids"]
            if len(ids) < n:
                notes.append(f"{lang}: document {j} of {n} tokens came out at {len(ids)}")
                continue
            text = tokenizer.decode(ids[:n], skip_special_tokens=True).rstrip("\ufffd")
            out.append(LongDoc(f"{lang}-{n}-{j}", lang, n, text, [docs[k][0] for k in picked]))
    return out, notes
