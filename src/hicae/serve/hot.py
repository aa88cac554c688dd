"""Hot memories: loaded memories and their decoder prefix KV caches, in an LRU bounded in bytes.

A memory asked about again skips the disk and (``PrefixCache``) the decoder pass over its
prompt-independent prefix: each request then runs only its prompt and the new tokens. The budget
counts the slots and the cached keys/values of every entry (``PrefixCache.nbytes``: layers x 2 x
kv_heads x head_dim values per prefix position); least recently used entries are dropped when the
total exceeds it. Memories are immutable (ids are content addresses), so a cached entry never goes
stale; a deleted memory is dropped at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from ..memory import Memory
from ..decoding.prefix_cache import PrefixCache
from .store import MemoryStore


@dataclass
class Hot:
    mem: Memory
    cache: PrefixCache | None  # None: prefix caching is off (budget 0) or unsupported by the model

    @property
    def nbytes(self) -> int:
        slots = sum(s.numel() * s.element_size() for s in self.mem.slots)
        return slots + (self.cache.nbytes if self.cache is not None else 0)


class HotMemories:
    def __init__(self, model: Any, store: MemoryStore, budget_bytes: int, encoder_weights: str | None = None):
        self.model, self.store, self.budget = model, store, budget_bytes
        self.encoder_weights = encoder_weights  # the model's, computed once by the engine
        self._items: OrderedDict[str, Hot] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0  # as of the last trim (the worker updates it after each job)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, memory_id: str) -> Hot:
        """The memory (checked against the model) and its prefix cache; loaded on a miss."""
        with self._lock:
            hot = self._items.get(memory_id)
            if hot is not None:
                self._items.move_to_end(memory_id)
                return hot
        mem = self.store.load(memory_id, device=self.model.device)
        try:
            self.model.check_memory(mem, encoder_weights=self.encoder_weights)
        except CheckpointError as e:
            raise CheckpointError(f"memory {memory_id}: {e}") from None
        cache = None
        if self.budget > 0:
            # the cached fingerprint: this runs on an HTTP thread, and the adapter may be mid-swap (compression
            # runs it in the model's dtype, speed.adapter_in_dtype), so it must not be read here
            cache = PrefixCache(self.model, mem, self.encoder_weights)
            cache = cache if cache.supported else None
        hot = Hot(mem, cache)
        if self.budget > 0:
            with self._lock:
                # DELETE removes the file, then drops the entry under this lock: a memory loaded just
                # before its deletion is not put back (it is served to this request only).
                if self.store.exists(memory_id):
                    hot = self._items.setdefault(memory_id, hot)  # another thread may have loaded it meanwhile
            # No trim here: sizing reads the prefix caches, which only the worker thread may touch
            # (it trims after each job).
        return hot

    def drop(self, memory_id: str) -> None:
        with self._lock:
            self._items.pop(memory_id, None)

    def trim(self) -> None:
        """Evict least recently used entries until the total fits the budget. Worker thread only: it
        reads the prefix caches, which the worker alone grows (after each job, when they may have grown)."""
        with self._lock:
            sizes = {k: h.nbytes for k, h in self._items.items()}
            total = sum(sizes.values())
            while total > self.budget and self._items:
                key, _ = self._items.popitem(last=False)
                total -= sizes[key]
                self.evictions += 1
            self.nbytes = total
