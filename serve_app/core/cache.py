"""A bounded cache of model outputs for (model, hypothesis, text, label).

The model's answer for one pair depends only on the model, the hypothesis (template + label, or
the label's own) and the text, so a repeated pair can skip the forward. What is cached is the pair's logits row,
not its score: scores depend on the other labels of the request (single-label softmax), logits
do not. Keys hold a 128-bit digest of the text, so an entry costs about 200 bytes whatever the
text's length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.core.lru import LRU

CacheKey = tuple[str, str, bytes, str]


def text_digest(text: str) -> bytes:
    """A short fixed-size stand-in for a text in cache keys (texts may be long)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def cache_keys(
    model: str, text: str, hypotheses: Sequence[str], labels: Sequence[str]
) -> list[CacheKey]:
    """The keys of one text's pairs, the ones the engine looks up. Keyed by the hypothesis
    itself, not the template, so a label's own hypothesis and a template that reads the same
    share an entry; the text's digest is taken once for all its labels."""
    digest = text_digest(text)
    return [(model, hyp, digest, label) for hyp, label in zip(hypotheses, labels, strict=True)]


class ResultCache:
    """LRU of logits rows; `max_entries=0` turns it off (every lookup misses, nothing kept)."""

    def __init__(self, max_entries: int) -> None:
        self._rows: LRU[CacheKey, np.ndarray] = LRU(max_entries)

    @property
    def enabled(self) -> bool:
        return self._rows.capacity > 0

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        """The cached row of each key, or None; counts a hit or a miss for each."""
        if not self.enabled:
            return [None] * len(keys)
        return self._rows.get_many(keys)

    def put_many(self, keys: Sequence[CacheKey], rows: Sequence[np.ndarray]) -> None:
        # Copies: a caller's array must not change what is cached.
        self._rows.put_many(
            (key, np.array(row, dtype=np.float32, copy=True)) for key, row in zip(keys, rows)
        )

    def stats(self) -> dict[str, Any]:
        hits, misses = self._rows.hits, self._rows.misses
        lookups = hits + misses
        return {
            "enabled": self.enabled,
            "entries": len(self._rows),
            "max_entries": self._rows.capacity,
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / lookups if lookups else 0.0,
        }
