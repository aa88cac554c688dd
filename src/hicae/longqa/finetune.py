"""Long-document fine-tuning on cached memories: compress each training document once, ask it many questions.

Why: a flat adapter pretrained on single 64-token texts has never read hundreds of slots from many
segments, nor answered an ``[FT]`` prompt about them. Its encoder already holds the text (held-out
reconstruction BLEU ~88 at 4x), so the encoder stays frozen and only the decoder side learns: the
decoder-side LoRA (``decoder_lora_r``) and the task embeddings. A document's memory is then a
constant: it is computed once (no encoder forward or backward per step), and each step reads one
document's memory and learns

- ``questions`` cloze answers about it (the gold span, verbatim; fresh questions at each visit,
  with 1-4 words / 2-5 characters asked), all sharing one decoder pass over ``before [slots] [FT]``:
  the KV cache of that prefix, with its graph, is repeated over the rows (``shared_prefix_losses``),
  so a 512-slot prefix is computed once per step, not once per question. The losses equal the
  rows' own (tests/longqa/test_finetune.py);
- ``ae_rows`` reconstructions of single segments from their own slots (``[AE]``), so that
  reconstruction does not drift while the decoder adapter moves.

loss = mean CE over answer tokens + ``ae_weight`` * mean CE over reconstruction tokens.

With ``retrieve_slots`` the step trains where ``memory_retrieved`` reads (``picked_doc``): BM25 picks the
segments of the document for a fresh cloze question, as the evaluation does, and the step's memory is
theirs (a few segments, spliced: the picked ones are similar in words, so they are the distractors the
evaluation's reader meets); the questions and reconstructions are about those segments. That memory is
small (64 slots), so it is computed every step, and with ``train_encoder`` with gradients: the encoder's
adapter learns to write slots that answer, the reconstruction rows keeping what it writes readable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from ..batching import pad_decoder
from ..errors import ConfigError
from ..instruct.questions import Question, cloze_questions
from ..layout import FT, IGNORE, SLOT, DecoderExample, Placement, segment_lengths, span_slot_positions
from ..memory import Memory
from .documents import LongDoc
from .retrieved import pick_segments, segment_ids

ANSWER_WORDS = (1, 2, 3, 4)  # English cloze: words asked (the evaluation asks 2)
ANSWER_CHARS = (2, 3, 4, 5)  # Chinese cloze: characters asked (the evaluation asks 4)


@dataclass
class DocMemory:
    """A training document and its memory, computed once by the frozen encoder."""

    doc: LongDoc
    ids: list[int]  # the text's tokens as compressed
    mem: Memory | None  # one entry: all segments' slots (None: not computed, the picked segments' is, per step)

    @property
    def slots(self) -> torch.Tensor:  # [S, D]
        return self.mem.slots[0]


def trainable_decoder_side(model: Any) -> dict[str, torch.nn.Parameter]:
    """Freeze everything but the decoder-side adapter and the task embeddings; returns what trains."""
    if not model.icae_config.decoder_lora_r:
        raise ConfigError("long-document fine-tuning trains the decoder-side adapter: the checkpoint has none "
                          "(decoder_lora_r = 0); pretrain with --decoder_lora_r 8 (the 0.5B recipe does)")
    if model.hierarchical:
        raise ConfigError("long-document fine-tuning on cached memories takes a flat ICAE checkpoint")
    model.requires_grad_(False)
    out = {n: p for n, p in model.trained_embeddings().items() if n.startswith("decoder_lora.")}
    out["task_embeddings"] = model.task_embeddings
    for p in out.values():
        p.requires_grad_(True)
    return out


def trainable(model: Any, encoder: bool = False) -> dict[str, torch.nn.Parameter]:
    """``trainable_decoder_side``, and with ``encoder`` the encoder's adapter and the memory embeddings too."""
    out = trainable_decoder_side(model)
    if encoder:
        out.update({f"encoder.{n}": p for n, p in model.encoder.named_parameters() if "lora_" in n})
        out["mem_embeddings"] = model.mem_embeddings
        for p in out.values():
            p.requires_grad_(True)
    return out


def tokenised(model: Any, docs: list[LongDoc]) -> list[DocMemory]:
    """Each document's tokens, no memory (the picked segments' memory is computed per step)."""
    return [DocMemory(d, model.check_length(model.tokens.text_ids([d.text])[0], where=d.id), None) for d in docs]


def memorise(model: Any, docs: list[LongDoc], log: Any = None) -> list[DocMemory]:
    """Each document compressed once (no grad), in order."""
    out = []
    with torch.no_grad():
        for i, d in enumerate(tokenised(model, docs)):
            out.append(DocMemory(d.doc, d.ids, model.compress_ids([d.ids])))
            if log:
                log(f"memory {i + 1}/{len(docs)}: {d.doc.id}, {len(d.ids)} tokens -> {out[-1].mem.num_slots[0]} slots")
    return out


def picked_ids(model: Any, dm: DocMemory, question: str, slots: int) -> tuple[list[int], list[int]]:
    """The tokens of the document's segments BM25 picks for ``question`` within ``slots`` (whole segments,
    in document order: what ``memory_retrieved`` reads), and their indices."""
    segs = segment_ids(model, dm.ids)
    keep = pick_segments([model.tokenizer.decode(x) for x in segs], question, model.icae_config.mem_size, slots)
    return [t for i in keep for t in segs[i]], keep


CLOZE_TRIES = 8  # draws of a cloze question before a document counts as yielding none


def drawn_question(doc: LongDoc, rng: random.Random, tries: int = CLOZE_TRIES) -> Question | None:
    """One cloze question of ``doc`` (2 words / 4 characters, the evaluation's shape), drawing again up to
    ``tries`` times: a Chinese text whose few CJK runs repeat their cues can fail a draw and pass the next."""
    for _ in range(tries):
        qs = cloze_questions(doc.text, 1, rng, doc.lang)
        if qs:
            return qs[0]
    return None


def picked_doc(model: Any, dm: DocMemory, rng: random.Random, slots: int, grad: bool) -> DocMemory | None:
    """The step's document in ``retrieve_slots`` training: the segments BM25 picks for a fresh cloze question
    (2 words / 4 characters, the evaluation's shape) of ``dm``, compressed now (with gradients if ``grad``).
    The memory of some segments of a flat memory equals that of their joined tokens (retrieved.sub_memory).
    None when the document yields no question (``drawn_question``)."""
    q = drawn_question(dm.doc, rng)
    if q is None:
        return None
    ids, keep = picked_ids(model, dm, q.prompt, slots)
    with torch.set_grad_enabled(grad):
        mem = model.compress_ids([ids])
    d = LongDoc(f"{dm.doc.id}@{','.join(map(str, keep))}", dm.doc.lang, len(ids), model.tokenizer.decode(ids))
    return DocMemory(d, ids, mem)


def askable(docs: list[LongDoc]) -> tuple[list[LongDoc], list[LongDoc]]:
    """The documents that yield a cloze question in ``CLOZE_TRIES`` seeded draws, and those that do not
    (training would stop at their first step)."""
    ok, bad = [], []
    for doc in docs:
        (ok if drawn_question(doc, random.Random(f"askable:{doc.id}")) else bad).append(doc)
    return ok, bad


def question_rows(model: Any, dm: DocMemory, rng: random.Random, n: int) -> tuple[list[Question], list[DecoderExample]]:
    """Up to ``n`` fresh cloze questions spread over the document (one count of words/characters per call),
    with their answers as targets: ``before [slots] [FT] after`` then ``gold <end>``."""
    qs = cloze_questions(dm.doc.text, n, rng, dm.doc.lang, answer_words=rng.choice(ANSWER_WORDS),
                         answer_chars=rng.choice(ANSWER_CHARS))
    S = dm.mem.num_slots[0]
    tok = model.tokenizer
    return qs, [model.tokens.ft_example(S, q.prompt, tok(q.gold, add_special_tokens=False)["input_ids"]) for q in qs]


def segment_rows(model: Any, dm: DocMemory, rng: random.Random, n: int
                 ) -> tuple[torch.Tensor, list[Placement] | None, list[DecoderExample]]:
    """``n`` distinct segments of the document, each reconstructed from its own k slots (``[AE]``):
    the slots [n*k, D], where each row's slots sit in its segment (follow positions), the examples.
    A segment is compressed alone in a multi-span memory, so its slots are exactly a one-segment memory's."""
    cfg = model.icae_config
    k = cfg.mem_size
    lens = segment_lengths(len(dm.ids), k, cfg.compression_rate, cfg.segmentation)
    starts = [sum(lens[:j]) for j in range(len(lens))]
    picked = rng.sample(range(len(lens)), min(n, len(lens)))
    slots = torch.cat([dm.slots[j * k : (j + 1) * k] for j in picked])
    exs = [model.ae_example(k, dm.ids[starts[j] : starts[j] + lens[j]]) for j in picked]
    placements = None
    if cfg.decoder_positions == "follow":
        placements = [Placement(span_slot_positions([lens[j]], k), lens[j]) for j in picked]
    return slots, placements, exs


def shared_prefix(examples: list[DecoderExample]) -> int:
    """Length of ``before [slots] [FT]``, the part every row shares (the same memory, the same template)."""
    p = examples[0].ids.index(FT) + 1
    head = examples[0].ids[:p]
    if any(ex.ids[:p] != head for ex in examples) or SLOT in examples[0].ids[p:]:
        raise ValueError("rows do not share one prefix 'before [slots] [FT]'")
    if any(lab != IGNORE for ex in examples for lab in ex.labels[: p + 1]):
        raise ValueError("a label inside the shared prefix (or on its first next token): no loss may start there")
    return p


def shared_prefix_losses(model: Any, slots: torch.Tensor, placement: Placement | None,
                         examples: list[DecoderExample]) -> torch.Tensor:
    """Token losses [N] of rows that read one memory (``slots`` [S, D]) through one prefix pass.

    The prefix ``before [slots] [FT]`` runs once (batch 1); its KV cache, with its graph, is repeated
    over the B rows, and the rows' rests (``after`` + target; right-padded to A) run against it with
    their own positions. Equal to ``model.token_losses`` of the full rows, in row-major order: no row's
    label lies in the prefix or on its first next token (``shared_prefix`` checks it)."""
    p = shared_prefix(examples)
    device = model.device
    full_pos = [model.example_positions(ex.ids, placement) for ex in examples]  # None: sequential
    prefix_ids = torch.tensor([examples[0].ids[:p]], device=device)  # [1, P]
    embeds = model.decoder_inputs(prefix_ids, slots.to(device))  # [1, P, D]
    pos = None if full_pos[0] is None else torch.tensor([full_pos[0][:p]], device=device)
    cache = DynamicCache(config=model.decoder.config)
    model.decoder.model(inputs_embeds=embeds, position_ids=pos, past_key_values=cache, use_cache=True)
    B = len(examples)
    cache.batch_repeat_interleave(B)  # [1, H, P, d] -> [B, H, P, d], differentiable
    rest = pad_decoder([DecoderExample(ex.ids[p:], ex.labels[p:]) for ex in examples], model.tokens.pad_id)
    ids = rest.ids.to(device)  # [B, A]
    r_embeds = model.decoder_inputs(ids, slots.new_zeros(0, slots.shape[-1]).to(device))  # no placeholders left
    mask = torch.cat([torch.ones(B, p, dtype=rest.attention_mask.dtype), rest.attention_mask], 1).to(device)
    if full_pos[0] is None:
        r_pos = (torch.arange(ids.shape[1], device=device) + p).expand(B, -1)
    else:
        r_pos = torch.zeros_like(ids)
        for b, fp in enumerate(full_pos):
            r_pos[b, : len(fp) - p] = torch.tensor(fp[p:], device=device)
    hidden = model.decoder.model(inputs_embeds=r_embeds, attention_mask=mask, position_ids=r_pos,
                                 past_key_values=cache, use_cache=True).last_hidden_state  # [B, A, D]
    losses, _ = model.labelled_losses(hidden, rest.labels.to(device))  # [N]
    return losses


def step_losses(model: Any, dm: DocMemory, rng: random.Random, questions: int, ae_rows: int
                ) -> dict[str, torch.Tensor]:
    """One document's step: cloze answer token losses and segment reconstruction token losses."""
    out: dict[str, torch.Tensor] = {}
    _, rows = question_rows(model, dm, rng, questions)
    if rows:
        placement = (model.placements(dm.mem) or [None])[0]
        out["ft"] = shared_prefix_losses(model, dm.slots, placement, rows)
    if ae_rows:
        slots, placements, exs = segment_rows(model, dm, rng, ae_rows)
        b = pad_decoder(exs, model.tokens.pad_id)
        out["ae"], _ = model.token_losses(b.ids.to(model.device), b.labels.to(model.device),
                                          b.attention_mask.to(model.device), slots.to(model.device), placements)
    return out


def combined_loss(losses: dict[str, torch.Tensor], ae_weight: float) -> torch.Tensor:
    """Mean answer-token CE + ae_weight * mean reconstruction-token CE (each task's own mean: a 64-token
    reconstruction must not outweigh a 3-token answer by its length)."""
    total = None
    for name, w in (("ft", 1.0), ("ae", ae_weight)):
        x = losses.get(name)
        if x is None or x.numel() == 0 or not w:
            continue
        term = w * x.mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("a step with no labelled token")
    return total
