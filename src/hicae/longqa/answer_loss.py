"""Held-out answer loss: how well a reader predicts the gold answer, teacher-forced, per condition.

Exact-match accuracy on a few dozen 2-word cloze answers moves in steps of 3 points and stays at 0
while a model is still far from right; the mean cross-entropy of the gold answer's tokens (``answer
<end-of-turn>``, nats a token) moves with every improvement and separates the conditions on the same
records:

- ``memory``: the ICAE reads the record's ``input`` compressed, then ``[FT] prompt`` (``ft_example``);
- ``full``: the plain base reads ``input``, a blank line and the prompt in one user turn (the full-text
  baseline of ``evaluation/qa.py``);
- ``none``: the plain base reads the prompt alone (what the answer costs without the text);
- ``memory_foreign``: the ICAE reads *another* record's input compressed (the next record of the same
  language): the gap to ``memory`` is what the answer gains from reading its own memory, apart from
  what fine-tuning taught about the answer's form (which ``memory`` and ``full`` do not share).
"""

from __future__ import annotations

from typing import Any

import torch

from ..batching import pad_decoder
from ..evaluation.qa import fulltext_content
from ..layout import with_target

CONDITIONS = ("memory", "memory_foreign", "full", "none")


def _answer_ids(model: Any, answer: str) -> list[int]:
    return model.tokenizer(answer, add_special_tokens=False)["input_ids"] + model.tokens.answer_end()


@torch.no_grad()
def record_losses(model: Any, rec: dict[str, Any], condition: str, foreign: str | None = None) -> torch.Tensor:
    """Token losses [N] of ``rec['answer']`` under ``condition`` (one record: no padding to reason about);
    ``foreign``: the input ``memory_foreign`` compresses instead of the record's."""
    target = _answer_ids(model, rec["answer"])
    dev = model.device
    if condition in ("memory", "memory_foreign"):
        if condition == "memory_foreign" and foreign is None:
            raise ValueError("memory_foreign needs the foreign input")
        text = rec["input"] if condition == "memory" else foreign
        mem = model.compress_ids(model.tokens.text_ids([text]))
        ex = model.tokens.ft_example(mem.num_slots[0], rec["prompt"], target[:-1])  # ft_example adds the end
        b = pad_decoder([ex], model.tokens.pad_id)
        losses, _ = model.token_losses(b.ids.to(dev), b.labels.to(dev), b.attention_mask.to(dev),
                                       mem.slots[0].to(dev), model.placements(mem))
        return losses
    if condition not in ("full", "none"):
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    content = fulltext_content(rec["input"], rec["prompt"]) if condition == "full" else rec["prompt"]
    ex = with_target(model.tokens.chat_ids(content), target)
    b = pad_decoder([ex], model.tokens.pad_id)
    losses, _ = model.token_losses(b.ids.to(dev), b.labels.to(dev), b.attention_mask.to(dev))  # the plain base
    return losses


def answer_losses(model: Any, records: list[dict[str, Any]], conditions: tuple[str, ...] = CONDITIONS
                  ) -> dict[str, dict[str, float]]:
    """Per language (``rec['lang']``): each condition's mean answer-token loss over all the records' answer
    tokens, and the number of records. A language needs two records of other inputs for ``memory_foreign``."""
    sums: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, int] = {}
    by_lang: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_lang.setdefault(rec.get("lang", "all"), []).append(rec)
    for rec in records:
        lang = rec.get("lang", "all")
        counts[lang] = counts.get(lang, 0) + 1
        same = by_lang[lang]
        i = same.index(rec)
        # the next record of the language whose input differs (a wrap-around search)
        foreign = next((r["input"] for r in same[i + 1:] + same[:i] if r["input"] != rec["input"]), None)
        for cond in conditions:
            if cond == "memory_foreign" and foreign is None:
                raise ValueError(f"memory_foreign: the {lang} records hold one input only")
            x = record_losses(model, rec, cond, foreign).float()  # [N]
            acc = sums.setdefault((lang, cond), [0.0, 0])
            acc[0] += float(x.sum())
            acc[1] += x.numel()
    out: dict[str, dict[str, float]] = {lang: {"records": n} for lang, n in sorted(counts.items())}
    for (lang, cond), (tot, n) in sums.items():
        out[lang][cond] = round(tot / max(1, n), 4)
    return out
