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

The answer loss scores only the teacher's greedy answer; ``record_kl`` (``kl=True``) compares whole
next-token distributions with the full-text reader's at the same tokens, ``KL(full || condition)``:
held out, the quantity that ``--ft_distill`` trains.
"""

from __future__ import annotations

from typing import Any

import torch

from ..batching import pad_decoder
from ..layout import IGNORE, DecoderExample, fulltext_content, with_target
from ..memory import Memory

CONDITIONS = ("memory", "memory_foreign", "full", "none")


@torch.no_grad()  # as evaluation compresses: with grad on, the encoder's bf16 path differs in the last bits
def compress(model: Any, text: str) -> Memory:
    return model.compress_ids(model.tokens.text_ids([text]))


def _reader(model: Any, rec: dict[str, Any], condition: str, memory: Memory | None
            ) -> tuple[DecoderExample, torch.Tensor | None, Any]:
    """What ``condition``'s reader reads, labelled at ``answer <end-of-turn>``: the decoder example, the
    slots [S, D] it holds (None: the plain base) and their placements."""
    answer = model.tokenizer(rec["answer"], add_special_tokens=False)["input_ids"]
    if condition in ("memory", "memory_foreign"):
        if memory is None:
            if condition == "memory_foreign":
                raise ValueError("memory_foreign needs the foreign input's memory")
            memory = compress(model, rec["input"])
        ex = model.tokens.ft_example(memory.num_slots[0], rec["prompt"], answer)  # adds the end of turn
        return ex, memory.slots[0], model.placements(memory)
    if condition in ("full", "none"):
        content = fulltext_content(rec["input"], rec["prompt"]) if condition == "full" else rec["prompt"]
        return with_target(model.tokens.chat_ids(content), answer + model.tokens.answer_end()), None, None
    raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")


def _batch(model: Any, ex: DecoderExample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = pad_decoder([ex], model.tokens.pad_id)  # one record: no padding to reason about
    return b.ids.to(model.device), b.labels.to(model.device), b.attention_mask.to(model.device)


@torch.no_grad()
def full_reading(model: Any, rec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain base reading the full text (the ``full`` condition, and the KL's reference): its final
    states [1, T, D] and labels [1, T]. Computed once per record, it serves the ``full`` loss and every
    condition's KL."""
    ids, labels, mask = _batch(model, _reader(model, rec, "full", None)[0])
    return model.decoder_hidden(ids, mask, None, None), labels


@torch.no_grad()
def record_measures(model: Any, rec: dict[str, Any], condition: str, memory: Memory | None = None,
                    kl: bool = False, full: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``record_losses`` and, with ``kl``, ``record_kl`` of one record from one decoder pass of the
    condition's reader: [N], [N] or None. ``full``: the record's ``full_reading`` if already computed
    (else it is computed here when needed)."""
    if kl and condition == "full":
        raise ValueError("the KL is measured against the full text: choose another condition")
    if condition == "full":
        hidden, labels = full if full is not None else full_reading(model, rec)
        return model.labelled_losses(hidden, labels)[0], None
    ex, slots, placements = _reader(model, rec, condition, memory)
    ids, labels, mask = _batch(model, ex)
    hidden = model.decoder_hidden(ids, mask, None if slots is None else slots.to(model.device), placements)
    losses, _ = model.labelled_losses(hidden, labels)  # = token_losses of the same batch
    if not kl:
        return losses, None
    t_hidden, t_labels = full if full is not None else full_reading(model, rec)
    taught = torch.ones(losses.numel(), dtype=torch.bool, device=model.device)  # every answer token
    return losses, model.distill_from_teacher(hidden, labels, taught, t_hidden, t_labels, temperature=1.0)


def record_losses(model: Any, rec: dict[str, Any], condition: str, memory: Memory | None = None) -> torch.Tensor:
    """Token losses [N] of ``rec['answer']`` and the end of turn under ``condition``. ``memory``: what the
    memory conditions read (``memory_foreign`` needs it: another input's; ``memory`` compresses the
    record's input without it)."""
    return record_measures(model, rec, condition, memory)[0]


def record_kl(model: Any, rec: dict[str, Any], condition: str, memory: Memory | None = None) -> torch.Tensor:
    """``KL(full || condition)`` [N] at each token of ``answer <end-of-turn>``, nats (T = 1): how far the
    condition's next-token distributions are from the plain base reading the full text. Held out, it is
    what ``--ft_distill`` trains (its teacher is that reader), beside the answer loss, which scores only
    the teacher's greedy answer."""
    return record_measures(model, rec, condition, memory, kl=True)[1]


def answer_losses(model: Any, records: list[dict[str, Any]], conditions: tuple[str, ...] = CONDITIONS,
                  kl: bool = False) -> dict[str, dict[str, float]]:
    """Per language (``rec['lang']``): each condition's mean answer-token loss over all the records' answer
    tokens, and the number of records; with ``kl``, also each condition's mean ``record_kl`` as
    ``kl_<condition>`` (not for ``full``, the reference). ``memory_foreign`` reads the memory of the language's next record
    whose input differs (wrapping around): a language needs two different inputs. Each input is
    compressed once, for its own records and as others' foreign memory."""
    by_lang: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_lang.setdefault(rec.get("lang", "all"), []).append(rec)
    memories: dict[str, Memory] = {}

    def memory_of(text: str) -> Memory:
        if text not in memories:
            memories[text] = compress(model, text)
        return memories[text]

    out: dict[str, dict[str, float]] = {}
    for lang, same in sorted(by_lang.items()):
        names = [*conditions, *(f"kl_{c}" for c in conditions if kl and c != "full")]
        sums = {name: [0.0, 0] for name in names}
        for i, rec in enumerate(same):
            foreign = next((r["input"] for r in same[i + 1:] + same[:i] if r["input"] != rec["input"]), None)
            # the full-text reading once per record: the full loss and every condition's KL reference
            full = full_reading(model, rec) if kl or "full" in conditions else None
            for cond in conditions:
                mem = None
                if cond == "memory":
                    mem = memory_of(rec["input"])
                elif cond == "memory_foreign":
                    if foreign is None:
                        raise ValueError(f"memory_foreign: the {lang} records hold one input only")
                    mem = memory_of(foreign)
                measured = record_measures(model, rec, cond, mem, kl=kl and cond != "full", full=full)  # [N], [N] | None
                for name, x in ((cond, measured[0]), (f"kl_{cond}", measured[1])):
                    if x is not None:
                        sums[name][0] += float(x.float().sum())
                        sums[name][1] += x.numel()
        out[lang] = {"records": len(same), **{c: round(t / max(1, n), 4) for c, (t, n) in sums.items()}}
    return out
