"""A bounded LRU cache of model outputs for (model, template, text, label), with hit metrics.

The model's answer for one pair depends only on the model, the hypothesis (template + label)
and the text, so a repeated pair (a caller re-sending texts, a job retried, a popular label set
over the same feed) can skip the forward. What is cached is the pair's logits row, not its
score: scores depend on the other labels of the request (single-label softmax), logits do not.

Texts can be long, so keys hold a 128-bit digest of the text instead of the text itself: an
entry costs about 200 bytes whatever the text's length. No Ray and no torch here.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

CacheKey = tuple[str, str, bytes, str]


def text_digest(text: str) -> bytes:
    """A short fixed-size stand-in for a text in cache keys (texts may be long)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def cache_key(model: str, template: str, text: str, label: str) -> CacheKey:
    return (model, template, text_digest(text), label)


def cache_keys(
    model: str, template: str, texts: Sequence[str], labels: Sequence[str]
) -> list[CacheKey]:
    """`cache_key` of every (text, label) pair, texts outer; each text is hashed once."""
    return [
        (model, template, digest, label) for digest in map(text_digest, texts) for label in labels
    ]


class ResultCache:
    """LRU of logits rows; `max_entries=0` turns it off (every lookup is a miss, nothing kept)."""

    def __init__(self, max_entries: int):
        self.max_entries = max(0, int(max_entries))
        self._rows: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        """The cached row of each key, or None; counts a hit or a miss for each."""
        if not self.enabled:
            return [None] * len(keys)
        found: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                found.append(row)
            hits = sum(row is not None for row in found)
            self.hits += hits
            self.misses += len(keys) - hits
        return found

    def put_many(self, keys: Sequence[CacheKey], rows: Sequence[np.ndarray]) -> None:
        if not self.enabled:
            return
        with self._lock:
            for key, row in zip(keys, rows):
                self._rows[key] = np.array(row, dtype=np.float32, copy=True)
                self._rows.move_to_end(key)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "enabled": self.enabled,
            "entries": len(self._rows),
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
        }
