"""JSONL data for pretraining and instruction fine-tuning, and the collator that builds ICAE batches.

Files are read lazily from disk: one validating pass records each record's byte offset (8 bytes a
record) and a CRC-32 of its bytes, then records are read by seeking. So any file size works, the
Trainer can shuffle and shard the usual way, and a malformed line is reported by file and line
before training starts. A file changed after it was indexed (its size or modification time, or a
record's bytes) is a DataError, not a read at stale offsets. A UTF-8 byte-order mark (Windows
tools write one) is skipped; text that is not valid Unicode (a lone surrogate escape such as
``"\\ud800"``) is refused by the validating pass, naming file and line.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..batching import pad_decoder, pad_encoder
from ..config import HierarchyConfig, ICAEConfig
from ..errors import DataError
from ..hierarchy.plan import budget_to_blocks, num_blocks
from ..layout import DecoderExample, ae_example, encoder_rows, fulltext_content, lm_example, with_target
from ..tasks import TASK_INDEX
from ..tokens import SpecialTokens, fit_length, tokenize

PRETRAIN_FIELDS = ("text",)
FINETUNE_FIELDS = ("input", "prompt", "answer")


def decode_utf8(raw: bytes, where: str) -> str:
    """UTF-8 text; a leading byte-order mark is dropped (read as ``utf-8-sig``)."""
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        raise DataError(f"{where}: invalid UTF-8 (byte 0x{raw[at]:02x} at offset {at})") from None


def check_unicode(text: str, where: str, name: str) -> None:
    """Refuse a lone surrogate: valid in JSON (``"\\ud800"``), but no character, so no tokenizer takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: field {name!r} is not valid Unicode: a lone surrogate "
                        f"{text[e.start]!r} at character {e.start} (half of a UTF-16 pair escaped in JSON)") from None


def parse_line(raw: bytes, where: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """One JSONL line -> record, or None for a blank line; every problem names ``where`` (file:line)."""
    line = decode_utf8(raw, where)
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object with fields {list(fields)}, got {type(rec).__name__}")
    for f in fields:
        if f not in rec:
            raise DataError(f"{where}: missing field {f!r} (each record needs {list(fields)})")
        if not isinstance(rec[f], str):
            raise DataError(f"{where}: field {f!r} must be a string, got {type(rec[f]).__name__}")
        check_unicode(rec[f], where, f)
    if not rec[fields[0]].strip():
        raise DataError(f"{where}: field {fields[0]!r} is empty: there is nothing to compress")
    return rec


def iter_jsonl(path: str | os.PathLike, fields: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` of a JSONL file, validating as it goes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            rec = parse_line(raw, f"{path}:{i}", fields)
            if rec is not None:
                yield i, rec


class RehearsalMix(Dataset):
    """Fine-tuning records followed by ``n_texts`` pretraining texts (``{'text'}``, cycled if fewer): a
    ``rehearsal`` share of what fine-tuning reads, so that reconstruction ([AE]) and continuation are not
    forgotten while the decoder learns to answer. The trainer's sampler shuffles the two together; the
    Collator trains a text as pretraining would (``Collator.is_text``)."""

    def __init__(self, records: Dataset, texts: Dataset, rehearsal: float):
        if not 0.0 < rehearsal < 1.0:
            raise DataError(f"--rehearsal_ratio must be in (0, 1), got {rehearsal}")
        self.records, self.texts = records, texts
        self.n_texts = max(1, round(len(records) * rehearsal / (1.0 - rehearsal)))

    def __len__(self) -> int:
        return len(self.records) + self.n_texts

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if i < len(self.records):
            return self.records[i]
        return self.texts[(i - len(self.records)) % len(self.texts)]


class JsonlDataset(Dataset):
    """Map-style view of a JSONL file: item ``i`` is ``{"index", "where", **record}`` read from disk."""

    def __init__(self, path: str | os.PathLike, fields: tuple[str, ...], limit: int | None = None):
        self.path = Path(path)
        self.fields = fields
        if limit is not None and limit < 1:
            raise DataError(f"{self.path}: a limit of {limit} records leaves nothing to read (use at least 1)")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        offsets, lines, crcs = [], [], []
        pos = 0
        with open(self.path, "rb") as f:
            self._stamp = self._file_stamp(os.fstat(f.fileno()))
            for i, raw in enumerate(f, 1):
                if parse_line(raw, f"{self.path}:{i}", fields) is not None:
                    offsets.append(pos)
                    lines.append(i)
                    crcs.append(zlib.crc32(raw))
                    if limit is not None and len(offsets) >= limit:
                        break
                pos += len(raw)
        if not offsets:
            raise DataError(f"{self.path}: no records (expected JSON lines with fields {list(fields)})")
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)
        self._crcs = np.asarray(crcs, dtype=np.uint32)
        self._fh = None
        self._pid = -1

    @staticmethod
    def _file_stamp(st: os.stat_result) -> tuple[int, int]:
        return st.st_size, st.st_mtime_ns

    def _changed(self, detail: str) -> DataError:
        return DataError(f"{self.path}: the file changed since it was indexed at the start of this run ({detail}); "
                         "records would be read at stale offsets: keep data files unchanged while training, "
                         "or restart")

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._fh is None or self._pid != os.getpid():  # one handle per DataLoader worker
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        # the path, not the handle: a file replaced by a rename leaves the open handle on the old one
        stamp = self._file_stamp(os.stat(self.path))
        if stamp != self._stamp:
            raise self._changed(f"size {self._stamp[0]} -> {stamp[0]} bytes, modified at another time")
        self._fh.seek(int(self._offsets[i]))
        where = f"{self.path}:{int(self._lines[i])}"
        raw = self._fh.readline()
        if zlib.crc32(raw) != int(self._crcs[i]):
            raise self._changed(f"the record of line {int(self._lines[i])} has other bytes")
        rec = parse_line(raw, where, self.fields)
        if rec is None:  # cannot happen with matching bytes; kept as an error, not an assert
            raise self._changed(f"line {int(self._lines[i])} is blank now")
        return {"index": i, "where": where, **rec}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fh"] = None
        return state


@dataclass
class Collator:
    """Records -> an ICAE training batch (encoder rows over all examples' segments; padded decoder).

    ``mode='pretrain'``: each text becomes an AE example, or with probability ``lm_ratio`` (when the
    text is long enough) an LM example: the text is cut at a random point ``s`` (``lm_cut``, see
    ``lm_split``); the head is compressed and the tail (more than ``min_tokens_for_lm`` tokens) is
    the continuation. The choice is seeded by the record index, so it is reproducible and survives
    resumption.
    ``mode='finetune'``: ``input`` is compressed; the decoder reads the chat-formatted
    ``[slots] [FT] prompt`` and learns ``answer <end-of-turn>``.
    """

    tokenizer: Any
    tokens: SpecialTokens
    config: ICAEConfig
    mode: str = "pretrain"
    lm_ratio: float = 0.0
    seed: int = 0
    hierarchy: HierarchyConfig | None = None  # set: batches for HierarchicalICAE (contexts as token lists)

    def __post_init__(self) -> None:
        if self.mode not in ("pretrain", "finetune"):
            raise ValueError(f"unknown mode {self.mode!r}")
        if not 0.0 <= self.lm_ratio <= 1.0:
            raise DataError(f"lm_ratio must be in [0, 1], got {self.lm_ratio}")

    def _checked(self, ids: list[int], where: str) -> list[int]:
        limit, option = (self.config.model_max_length, "--model_max_length") if self.hierarchy is None else (
            self.hierarchy.max_text_tokens, "--max_text_tokens")
        return fit_length(ids, limit, self.config.overlong, where, option)

    def lm_split(self, ids: list[int], rng: random.Random, cap: int) -> tuple[str, list[int], list[int]] | None:
        """A text drawn for LM: ``("lm", head, continuation[:cap])``, ``("ae", head, head)`` or None (AE on the text).

        ``second_half`` (default): ``s`` uniform in ``[ceil(L/2), L - min_tokens_for_lm - 1]``, so the
        memory always holds at least half the text and the continuation more than
        ``min_tokens_for_lm`` tokens; a text too short for that is None. ``uniform`` (the reference):
        ``s`` uniform in ``[1, L]``; a continuation of ``min_tokens_for_lm`` tokens or fewer makes an AE
        example of the head.
        """
        cfg, L = self.config, len(ids)
        if cfg.lm_cut == "uniform":
            s = rng.randint(1, L)
            if L - s > cfg.min_tokens_for_lm:
                return "lm", ids[:s], ids[s : s + cap]
            return "ae", ids[:s], ids[:s]
        lo, hi = math.ceil(L / 2), L - cfg.min_tokens_for_lm - 1
        if hi < lo:
            return None
        s = rng.randint(lo, hi)
        return "lm", ids[:s], ids[s : s + cap]

    def split(self, ids: list[int], index: int) -> tuple[str, list[int], list[int]]:
        """Choose the objective of a pretraining text: ``(task, context, target)``."""
        rng = random.Random(self.seed * 1_000_003 + index)
        if rng.random() < self.lm_ratio:
            # the text fits model_max_length (checked before), so its continuation does too
            cut = self.lm_split(ids, rng, len(ids))
            if cut is not None:
                return cut
        return "ae", ids, ids

    def split_hierarchical(self, ids: list[int], index: int) -> tuple[str, list[int], list[int]]:
        """Objective of a long text for the hierarchy: ``(task, context, target)``.

        LM (probability ``lm_ratio``, when long enough): the head, compressed hierarchically, and
        the next tokens (at most ``model_max_length``) to continue. AE: a level ``l`` drawn
        uniformly among those whose span ``S * g^(l-1)`` fits the text and ``model_max_length``;
        a window of that span, which compresses into one level-``l`` block, is reconstructed.
        """
        cfg, hier = self.config, self.hierarchy
        assert hier is not None
        rng = random.Random(self.seed * 1_000_003 + index)
        S, cap = cfg.segment_tokens, cfg.model_max_length
        if rng.random() < self.lm_ratio:
            cut = self.lm_split(ids, rng, cap)
            if cut is not None and cut[0] == "lm":
                return cut
            if cut is not None:  # 'uniform' with a short continuation: AE within the head
                ids = cut[1]
        L = len(ids)
        spans = [S * hier.group_size ** (lvl - 1) for lvl in range(1, hier.levels + 1)]
        fits = [w for w in spans if w <= min(L, cap)] or [min(L, S, cap)]
        w = rng.choice(fits)
        start = rng.randint(0, L - w)
        return "ae", ids[start : start + w], ids[start : start + w]

    def _num_slots(self, contexts: list[list[int]]) -> tuple[list[int], Any]:
        cfg = self.config
        if self.hierarchy is None:
            rows = encoder_rows(contexts, cfg.mem_size, cfg.compression_rate, cfg.segmentation)
            return [n * cfg.mem_size for n in rows.segments_per_text], rows
        hier = self.hierarchy
        budget = budget_to_blocks(hier.max_slots, cfg.mem_size)
        counts = [num_blocks(len(c), cfg.segment_tokens, hier.group_size, hier.levels, budget) for c in contexts]
        return [n * cfg.mem_size for n in counts], None

    def is_text(self, r: dict[str, Any]) -> bool:
        """A pretraining record: every record in pretraining; in fine-tuning a rehearsal text (``{'text'}``
        without ``input``, see ``RehearsalMix``), trained as in pretraining (AE, or LM by ``lm_ratio``)."""
        return self.mode == "pretrain" or ("input" not in r and "text" in r)

    def teacher_example(self, task: str, record: dict[str, Any], ids: list[int], ctx: list[int],
                        target: list[int]) -> DecoderExample:
        """What the distillation teacher reads for one example, labelled at the student's target tokens.

        LM: the whole text, head + continuation (the first ``leave_tokens_for_lm`` tokens free, as the
        student's). FT: one chat turn holding the input (as the student compressed it: its head where
        ``overlong`` truncated it) and the prompt (``fulltext_content``: the full-text baseline's and
        build-qa's teacher's layout), then ``answer <end>``.
        """
        if task == "lm":
            return with_target(ctx, target, self.config.leave_tokens_for_lm)
        text = record["input"]
        if len(ctx) < len(ids):  # truncated: the teacher reads what the memory holds
            text = self.tokenizer.decode(ctx[len(self.tokens.text_prefix):])
        return with_target(self.tokens.chat_ids(fulltext_content(text, record["prompt"])),
                           list(target) + self.tokens.answer_end())

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        # BOS first where the tokenizer adds one
        raw = self.tokens.text_ids([r["text"] if self.is_text(r) else r["input"] for r in records])
        contexts, tasks, targets = [], [], []
        for r, ids in zip(records, raw):
            ids = self._checked(ids, r.get("where", f"record {r.get('index')}"))
            if self.is_text(r):
                split = self.split if self.hierarchy is None else self.split_hierarchical
                task, ctx, tgt = split(ids, int(r.get("index", 0)))
            else:
                task, ctx, tgt = "ft", ids, tokenize(self.tokenizer, [r["answer"]])[0]
            contexts.append(ctx)
            tasks.append(task)
            targets.append(tgt)
        slot_counts, rows = self._num_slots(contexts)
        examples = []
        for r, task, tgt, n in zip(records, tasks, targets, slot_counts):
            if task == "ae":
                examples.append(ae_example(n, tgt, self.tokens.eos_id))
            elif task == "lm":
                examples.append(lm_example(n, tgt, cfg.leave_tokens_for_lm, cfg.add_special_token_for_lm))
            else:
                examples.append(self.tokens.ft_example(n, r["prompt"], tgt))
        dec = pad_decoder(examples, self.tokens.pad_id, side="right")
        batch: dict[str, Any] = {
            "dec_ids": dec.ids,
            "dec_labels": dec.labels,
            "dec_mask": dec.attention_mask,
            "task": torch.tensor([TASK_INDEX[t] for t in tasks], dtype=torch.long),
        }
        taught = [i for i, t in enumerate(tasks) if cfg.distill_share(t)]
        if taught:
            # The teacher (the plain base) reads each distilled example as plain text, labelled as the student's
            # target is: both label sets, read row-major, list the same tokens in the same order. Only with
            # lm_distill / ft_distill (the batch is unchanged without them).
            teach = pad_decoder([self.teacher_example(tasks[i], records[i], raw[i], contexts[i], targets[i])
                                 for i in taught], self.tokens.pad_id, side="right")
            batch.update(teacher_ids=teach.ids, teacher_labels=teach.labels, teacher_mask=teach.attention_mask)
        if rows is None:  # the hierarchy plans and encodes its contexts itself
            batch["contexts"] = contexts
        else:
            enc = pad_encoder(rows, self.tokens.pad_id)
            batch.update(enc_ids=enc.ids, enc_seg_lens=enc.seg_lens,
                         segments_per_example=torch.tensor(rows.segments_per_text, dtype=torch.long))
        return batch
