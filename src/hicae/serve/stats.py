"""Counters of ``GET /metrics``, shared by the HTTP handlers and the model worker (thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()
        self._max: dict[str, int] = {}
        self.started = time.time()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n

    def high(self, name: str, value: int) -> None:
        """Keep the largest value seen under ``name``."""
        with self._lock:
            self._max[name] = max(self._max.get(name, 0), value)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self._c, **self._max}
