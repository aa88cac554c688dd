"""The memory store: one safetensors memory file per id in a folder, written atomically.

Ids are content addresses (``memory_id``): 32 hex digits of a SHA-256 over what made the memory
(the texts, the budget, the model's config and weights fingerprints), so the same text on the same
model maps to the same file and is compressed once. An id is checked against that pattern before
it becomes a path, so no request can name a file outside the store.

Files appear whole or not at all (``Memory.save`` writes a temporary file and renames it), so a
server killed mid-write leaves at most a hidden ``.*.tmp`` file, which the next start removes. One
server owns a store at a time (an ``flock`` on ``.lock``, released by the kernel even on kill -9).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ..errors import CheckpointError, ConfigError, DataError, HicaeError
from ..memory import FORMAT, Memory
from ..memory_checks import parse_metadata

SUFFIX = ".mem.safetensors"
_ID = re.compile(r"[0-9a-f]{32}")


class NotFound(HicaeError):
    """An id the store does not hold."""


def memory_id(model: Any, *, encoder_weights: str | None = None, **what: Any) -> str:
    """The content address of a memory: what made it (JSON-able) and which model made it.

    ``encoder_weights``: the trained encoder's fingerprint if already known (else computed now).
    """
    identity = {
        "config": model.fingerprint,
        "base_weights": model.base_weights,
        "encoder_weights": encoder_weights or model.encoder_weights(),
        "max_length": list(model.length_limit()) + [model.icae_config.overlong],
    }
    payload = json.dumps({"v": 1, "model": identity, **what}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def check_id(memory_id: str) -> str:
    if not isinstance(memory_id, str) or not _ID.fullmatch(memory_id):
        shown = memory_id if len(str(memory_id)) <= 40 else str(memory_id)[:40] + "..."
        raise DataError(f"invalid memory id {shown!r}: ids are 32 lowercase hex digits")
    return memory_id


class MemoryStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.root / ".lock", "a+")
        except OSError as e:
            raise ConfigError(f"--store {root}: cannot use it: {e.strerror or e}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ConfigError(f"--store {root}: another hicae serve is using this store") from None
        for tmp in self.root.glob(".*.tmp"):  # left by a killed server: never a complete memory
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self._lock.close()

    def path(self, memory_id: str) -> Path:
        return self.root / f"{check_id(memory_id)}{SUFFIX}"

    def exists(self, memory_id: str) -> bool:
        return self.path(memory_id).is_file()

    def ids(self) -> list[str]:
        names = (p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}"))
        return sorted(n for n in names if _ID.fullmatch(n))

    def _named(self, memory_id: str, e: HicaeError) -> HicaeError:
        """The error with the server's path replaced by the id (clients see ids, not paths)."""
        return type(e)(str(e).replace(str(self.path(memory_id)), f"memory {memory_id}"))

    def load(self, memory_id: str, device: Any = "cpu") -> Memory:
        path = self.path(memory_id)
        if not path.is_file():
            raise NotFound(f"no memory {memory_id}")
        try:
            return Memory.load(path, device=device)
        except CheckpointError as e:
            raise self._named(memory_id, e) from None

    def metadata(self, memory_id: str) -> dict[str, Any]:
        """The file's metadata, read from its header only (no tensors)."""
        path = self.path(memory_id)
        if not path.is_file():
            raise NotFound(f"no memory {memory_id}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a hicae memory file (metadata format={meta.get('format')!r})")
            return parse_metadata(path, meta)
        except CheckpointError as e:
            raise self._named(memory_id, e) from None
        except Exception as e:  # safetensors' header errors
            raise CheckpointError(f"memory {memory_id}: cannot read memory file: {e}") from None

    def save(self, memory_id: str, mem: Memory) -> None:
        mem.save(self.path(memory_id))

    def delete(self, memory_id: str) -> None:
        try:
            self.path(memory_id).unlink()
        except FileNotFoundError:
            raise NotFound(f"no memory {memory_id}") from None
