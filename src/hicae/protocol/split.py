"""Held out by document: which documents are test documents, deterministically.

Two rules, chosen per domain (``sources.Domain.split``):

- ``hash``: a document is held out when ``sha256(f"{seed}:{split_key}")``, read as a number in
  [0, 1), is below ``fraction``. The decision depends on the document's key only, never on which
  other documents exist or their order, so adding a domain or a package update that adds files
  leaves every other decision unchanged. The two Debian references share their keys (section
  numbers): a section held out in English is held out in Chinese too.
- ``proxy``: the split that ``experiments/proxy.py`` / ``real_quality.py`` made for the shipped
  adapter's training (a seeded shuffle of document indices, ``round(n * fraction)`` test
  documents), reproduced from each document's index in that list. Used for the two corpora the
  shipped adapter was trained on (Python docs, fortunes-zh), so that its test documents are
  never ones it trained on.
"""

from __future__ import annotations

import hashlib
import random

from .sources import DOMAINS, Document


def hash_held_out(split_key: str, seed: int, fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{split_key}".encode("utf-8")).hexdigest()
    return int(h[:15], 16) / 16**15 < fraction


def proxy_test_indices(n: int, fraction: float, seed: int) -> set[int]:
    """Test indices of ``experiments/proxy.py``'s ``split_documents`` over ``n`` documents (same arithmetic)."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    n_test = max(1, round(n * fraction)) if n > 1 else 0
    return set(idx[:n_test])


def split_documents(docs: list[Document], seed: int, fraction: float) -> tuple[list[Document], list[Document]]:
    """``(train, test)``: every document on exactly one side, by its domain's rule; order kept."""
    proxy_sets: dict[tuple[str, int], set[int]] = {}
    train, test = [], []
    for d in docs:
        rule = DOMAINS[d.domain].split if d.domain in DOMAINS else "hash"
        if rule == "proxy" and d.proxy_index is not None and d.proxy_total is not None:
            key = (d.domain, d.proxy_total)
            if key not in proxy_sets:
                proxy_sets[key] = proxy_test_indices(d.proxy_total, fraction, seed)
            held = d.proxy_index in proxy_sets[key]
        else:
            held = hash_held_out(d.split_key, seed, fraction)
        (test if held else train).append(d)
    return train, test
