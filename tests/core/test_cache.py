"""The result cache: a bounded LRU of logits keyed by (model, template, text, label)."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.cache import ResultCache, cache_key


def row(x: float) -> np.ndarray:
    return np.array([x, x + 1, x + 2], dtype=np.float32)


def test_hits_misses_and_lru_eviction() -> None:
    cache = ResultCache(2)
    a, b, c = (cache_key("m", "T {}", text, "x") for text in ("a", "b", "c"))
    assert cache.get_many([a, b]) == [None, None]
    cache.put_many([a, b], [row(1), row(2)])
    assert cache.get_many([a])[0][0] == 1  # a is now the most recent
    cache.put_many([c], [row(3)])  # evicts b, the least recent
    found = cache.get_many([a, b, c])
    assert found[0] is not None and found[1] is None and found[2] is not None
    stats = cache.stats()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (2, 3, 3)
    assert stats["hit_rate"] == pytest.approx(0.5)


def test_keys_tell_apart_model_template_text_and_label() -> None:
    base = cache_key("m", "T {}", "text", "x")
    assert base == cache_key("m", "T {}", "text", "x")
    others = [
        cache_key("m2", "T {}", "text", "x"),
        cache_key("m", "U {}", "text", "x"),
        cache_key("m", "T {}", "text!", "x"),
        cache_key("m", "T {}", "text", "y"),
    ]
    assert base not in others and len(set(others)) == 4


def test_a_zero_size_cache_is_off_and_keeps_nothing() -> None:
    cache = ResultCache(0)
    key = cache_key("m", "T {}", "a", "x")
    cache.put_many([key], [row(1)])
    assert not cache.enabled and cache.get_many([key]) == [None] and len(cache) == 0


def test_stored_rows_are_copies() -> None:
    cache = ResultCache(4)
    key, value = cache_key("m", "T {}", "a", "x"), row(1)
    cache.put_many([key], [value])
    value[0] = 99
    assert cache.get_many([key])[0][0] == 1
