"""Compressed contexts: the memory slots of each text, with the metadata that says what made them."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, DataError
from .io.fileio import atomic_path
from .memory_checks import check_slots, parse_metadata

FORMAT = "hicae-memory"
FORMAT_VERSION = 1


@dataclass
class Memory:
    """Slots of a batch of texts.

    ``slots[i]`` is a ``[num_slots_i, D]`` tensor: text ``i``'s segments' slots, concatenated in text
    order. Texts of different lengths have different slot counts, so a list (not a padded tensor).
    """

    slots: list[torch.Tensor]
    num_tokens: list[int]  # text tokens each entry stands for
    num_segments: list[int]
    base_model: str
    fingerprint: str
    mem_size: int
    compression_rate: int
    levels: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # Hierarchical memory only: per text, its retained blocks oldest first as ``[level, start,
    # end]`` in level-1 segments (each block has ``mem_size`` slots), and the token ids of its
    # trailing partial segment (whose provisional block is the last one), kept for ``append``.
    blocks: list[list[list[int]]] | None = None
    tails: list[list[int]] | None = None
    # Weights fingerprints (see io/fingerprint.py) of the base model and of the trained encoder that
    # made the slots; empty in memories of an older hicae (and from ``compress_ids``, internal).
    base_weights: str = ""
    encoder_weights: str = ""

    def __post_init__(self) -> None:
        n = len(self.slots)
        if not (len(self.num_tokens) == len(self.num_segments) == n):
            raise ValueError("slots, num_tokens and num_segments must have one entry per text")
        if (self.blocks is None) != (self.tails is None):
            raise ValueError("blocks and tails go together")
        if self.blocks is not None and not (len(self.blocks) == len(self.tails) == n):
            raise ValueError("blocks and tails must have one entry per text")

    @property
    def hierarchical(self) -> bool:
        return self.blocks is not None

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def num_slots(self) -> list[int]:
        return [int(s.shape[0]) for s in self.slots]

    @property
    def hidden_size(self) -> int:
        return int(self.slots[0].shape[-1]) if self.slots else 0

    def _with(self, slots: list[torch.Tensor], idx: list[int]) -> "Memory":
        return Memory(
            slots,
            [self.num_tokens[i] for i in idx],
            [self.num_segments[i] for i in idx],
            self.base_model,
            self.fingerprint,
            self.mem_size,
            self.compression_rate,
            self.levels,
            dict(self.extra),
            None if self.blocks is None else [self.blocks[i] for i in idx],
            None if self.tails is None else [self.tails[i] for i in idx],
            self.base_weights,
            self.encoder_weights,
        )

    def __getitem__(self, i: int | slice | list[int]) -> "Memory":
        if isinstance(i, int):
            idx = [range(len(self))[i]]
        elif isinstance(i, slice):
            idx = list(range(len(self)))[i]
        else:
            idx = list(i)
        return self._with([self.slots[j] for j in idx], idx)

    @property
    def origin(self) -> tuple:
        """What made the slots (model, config, weights): memories of one origin can be joined (``cat``)."""
        return (self.base_model, self.fingerprint, self.mem_size, self.compression_rate, self.base_weights,
                self.encoder_weights)

    @classmethod
    def cat(cls, mems: list["Memory"]) -> "Memory":
        """The entries of several memories of one origin, in order: the rows of one decoding call
        (``hicae serve`` batches questions about different memories). Slot tensors are the same objects,
        so a prefix cache of each memory still recognises its rows. ``extra`` is not carried over;
        hierarchy blocks are, if every memory has them."""
        if not mems:
            raise DataError("Memory.cat: no memories")
        first = mems[0]
        if any(m.origin != first.origin for m in mems):
            raise DataError("Memory.cat: the memories were made by different models, configs or weights")
        hier = all(m.hierarchical for m in mems)
        return cls(
            [s for m in mems for s in m.slots],
            [n for m in mems for n in m.num_tokens],
            [n for m in mems for n in m.num_segments],
            first.base_model,
            first.fingerprint,
            first.mem_size,
            first.compression_rate,
            max(m.levels for m in mems),
            {},
            [b for m in mems for b in m.blocks] if hier else None,
            [t for m in mems for t in m.tails] if hier else None,
            first.base_weights,
            first.encoder_weights,
        )

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Memory":
        return self._with([s.to(device=device, dtype=dtype) for s in self.slots], list(range(len(self))))

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "base_model": self.base_model,
            "fingerprint": self.fingerprint,
            "mem_size": str(self.mem_size),
            "compression_rate": str(self.compression_rate),
            "levels": str(self.levels),
            "num_tokens": json.dumps(self.num_tokens),
            "num_segments": json.dumps(self.num_segments),
            "extra": json.dumps(self.extra),
            **({} if self.blocks is None else {"blocks": json.dumps(self.blocks), "tails": json.dumps(self.tails)}),
            **{k: v for k, v in (("base_weights", self.base_weights), ("encoder_weights", self.encoder_weights)) if v},
        }

    def check_finite(self, where: str) -> None:
        """Refuse NaN or inf slots, naming the tensor: a decoder turns them into garbage (``!!!!``)."""
        for i, s in enumerate(self.slots):
            if not bool(torch.isfinite(s).all()):
                raise CheckpointError(f"{where}: slots.{i} (text {i}) has non-finite values (NaN or inf); "
                                      "the model's weights are broken or its dtype overflowed")

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file atomically (no partial file is left on failure)."""
        tensors = {f"slots.{i}": s.detach().contiguous().cpu() for i, s in enumerate(self.slots)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any = "cpu") -> "Memory":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such memory file")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise CheckpointError(f"{path}: not a hicae memory file (metadata format={meta.get('format')!r})")
                if int(meta.get("format_version", -1)) > FORMAT_VERSION:
                    raise CheckpointError(f"{path}: memory format {meta['format_version']} is newer than this hicae reads")
                fields = parse_metadata(path, meta)
                n = len(fields["num_tokens"])
                keys = set(f.keys())
                expected = {f"slots.{i}" for i in range(n)}
                if keys != expected:
                    raise CheckpointError(
                        f"{path}: tensors {sorted(keys ^ expected)} are missing or unexpected for {n} texts"
                    )
                slots = [f.get_tensor(f"slots.{i}") for i in range(n)]
        except CheckpointError:
            raise
        except Exception as e:  # safetensors' header errors, bad JSON, missing keys
            raise CheckpointError(f"{path}: cannot read memory file: {e}") from e
        check_slots(path, fields, slots)
        mem = cls(slots, **fields)
        mem.check_finite(str(path))
        if not mem.base_weights:
            logging.getLogger("hicae").warning(
                "hicae: warning: %s records no weights fingerprint (an older hicae); the weights that made it "
                "are not checked", path)
        problem = mem.hierarchy_problem()
        if problem:
            raise CheckpointError(f"{path}: not a valid hierarchical memory: {problem}")
        return mem

    def hierarchy_problem(self) -> str | None:
        """What is wrong with the blocks and tails of a hierarchical memory (None if nothing is).

        A file could name any level or token id; ``append`` would index the level embeddings and the
        vocabulary with them. Each text's blocks must cover segments ``0..n`` in order, one block of
        ``mem_size`` slots each, at levels ``1..levels``; its tail holds token ids (checked against
        the vocabulary by the model, ``check_memory``).
        """
        if not self.hierarchical:
            return None
        if not (isinstance(self.levels, int) and self.levels >= 1):
            return f"levels {self.levels!r}"
        for i, (blocks, tail, slots) in enumerate(zip(self.blocks, self.tails, self.slots)):
            end = 0
            for b in blocks:
                if not (isinstance(b, list) and len(b) == 3 and all(type(x) is int for x in b)):
                    return f"text {i}: block {b!r} is not [level, start, end]"
                level, start, stop = b
                if not 1 <= level <= self.levels:
                    return f"text {i}: block {b} names level {level}, outside 1..{self.levels}"
                if start != end or stop <= start:
                    return f"text {i}: block {b} does not follow the previous block (segments {end}..)"
                end = stop
            if slots.shape[0] != len(blocks) * self.mem_size:
                return f"text {i}: {slots.shape[0]} slots for {len(blocks)} blocks of {self.mem_size}"
            if not (isinstance(tail, list) and all(type(t) is int and t >= 0 for t in tail)):
                return f"text {i}: its tail is not a list of token ids"
        return None
