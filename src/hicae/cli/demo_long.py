"""``hicae demo``'s long-document part: one held-out document of several thousand tokens, compressed once,
three questions answered from its memory beside the full text and BM25-retrieved chunks, with times.

The document is the GPL-3 text that every Debian system carries (``/usr/share/common-licenses/GPL-3``,
base-files; in none of the adapter's training data), or ``--long_document FILE``. The questions are
cloze questions (which words follow a quoted phrase): their answer is a span of the text, so each
answer is marked right or wrong by the strict score of ``experiments/long_qa.py``. Four readers: the
decoder over the whole memory; the decoder over the slots of the few segments BM25 picks for the question
(``PICKED_SLOTS``: 64 slots, 256 tokens of text at 4x); the plain base over the full text; the plain base
over BM25 chunks of as many tokens as the whole memory has slots (the same budget).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

LONG_DOCUMENT = Path("/usr/share/common-licenses/GPL-3")
PICKED_SLOTS = 64  # the picked segments' slots the decoder reads (long_qa's --retrieve_slots default)


def timed(fn: Any) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds (the demo's timings)."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _short(s: str, n: int = 70) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def long_document_part(model: Any, path: str | None, answer_from_text: Any, questions: int = 3) -> dict[str, Any] | None:
    """Print the long-document part; returns its figures (None when there is no document to read)."""
    from ..instruct.build import text_rng
    from ..instruct.questions import cloze_questions
    from ..longqa.contexts import bm25_ids
    from ..longqa.retrieved import retrieved_memory, segment_ids
    from ..longqa.scoring import strict

    doc = Path(path) if path else LONG_DOCUMENT
    if not doc.is_file():
        print(f"\n[demo] long document: {doc} not found (it ships with Debian's base-files); "
              "--long_document FILE reads another")
        return None
    text = doc.read_text(encoding="utf-8", errors="replace")
    ids = model.tokens.text_ids([text])[0]
    qs = cloze_questions(text, questions, text_rng(0, doc.name), None)
    with torch.no_grad():
        mem, t_comp = timed(lambda: model.compress_ids([ids]))
        cache = model.prefix_cache(mem)
        _, t_prefix = timed(lambda: model.generate_ids(mem, [qs[0].prompt], max_new_tokens=1, prefix_cache=cache))
    n = mem.num_slots[0]
    print(f"\n[demo] long document {doc} ({len(ids)} tokens) -> {n} memory slots: compressed once in {t_comp:.1f} s, "
          f"the decoder read the memory once in {t_prefix:.1f} s; then {len(qs)} questions (the words after a quote):")
    tok = model.tokenizer
    seg_texts = [tok.decode(p) for p in segment_ids(model, ids)]  # what BM25 picks the memory's segments by
    picked = f"memory, {PICKED_SLOTS} slots picked"
    score = {"memory": 0.0, picked: 0.0, "full text": 0.0, "BM25": 0.0}
    for q in qs:
        with torch.no_grad():
            ans_mem, t_mem = timed(lambda: model.generate(mem, [q.prompt], max_new_tokens=16, prefix_cache=cache)[0])
            (sub, _), t_pick = timed(lambda: retrieved_memory(model, mem, seg_texts, q.prompt, PICKED_SLOTS))
            ans_pick, t_sub = timed(lambda: model.generate(sub, [q.prompt], max_new_tokens=16, prefix_cache=False)[0])
        ans_full, t_full = timed(lambda: answer_from_text(model, text, q.prompt, 16))
        ctx, _ = bm25_ids(ids, q.prompt, n, 128, tok)
        ans_bm25, t_bm25 = timed(lambda: answer_from_text(model, tok.decode(ctx), q.prompt, 16))
        print(f"\n  Q: {q.prompt}\n     gold: {q.gold!r}")
        for label, ans, t in (("memory", ans_mem, t_mem), (picked, ans_pick, t_pick + t_sub),
                              ("full text", ans_full, t_full), ("BM25", ans_bm25, t_bm25)):
            ok = strict(ans, q.gold or "", q.lang)
            score[label] += ok
            print(f"     {label:<24} {'right' if ok else 'wrong'}  {t:5.1f} s  {_short(ans)!r}")
    print(f"\n  right out of {len(qs)}: " + ", ".join(f"{k} {int(v)}" for k, v in score.items()) +
          f" (memory: {n} slots; picked: the {sub.num_slots[0]} slots of the {sub.num_segments[0]}"
          f" segments BM25 ranks best; full text: {len(ids)} tokens; BM25: {n} tokens)")
    return {"tokens": len(ids), "slots": n, "picked_slots": sub.num_slots[0], "right": score, "questions": len(qs)}
