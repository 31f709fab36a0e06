"""A bounded, thread-safe LRU map: the one cache structure every cache here uses."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `capacity` entries; the least recently used one goes first. `capacity=0` keeps
    nothing (every lookup misses). Hits and misses are counted."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()  # callers may run on several threads (forward workers)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        found: list[V | None] = []
        with self._lock:
            for key in keys:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                found.append(value)
            hits = sum(value is not None for value in found)
            self.hits += hits
            self.misses += len(keys) - hits
        return found

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            for key, value in items:
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
