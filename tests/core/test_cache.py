"""The result cache: a bounded LRU of logits keyed by (model, hypothesis, text, label), with
`cache_keys`, the one key function the engine uses (tests/engine/test_cache_keys.py)."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.cache import CacheKey, ResultCache, cache_keys


def row(x: float) -> np.ndarray:
    return np.array([x, x + 1, x + 2], dtype=np.float32)


def key(model: str, hypothesis: str, text: str, label: str) -> CacheKey:
    (only,) = cache_keys(model, text, [hypothesis], [label])
    return only


def test_hits_misses_and_lru_eviction() -> None:
    cache = ResultCache(2)
    a, b, c = (key("m", "It is x.", text, "x") for text in ("a", "b", "c"))
    assert cache.get_many([a, b]) == [None, None]
    cache.put_many([a, b], [row(1), row(2)])
    assert cache.get_many([a])[0][0] == 1  # a is now the most recent
    cache.put_many([c], [row(3)])  # evicts b, the least recent
    found = cache.get_many([a, b, c])
    assert found[0] is not None and found[1] is None and found[2] is not None
    stats = cache.stats()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (2, 3, 3)
    assert stats["hit_rate"] == pytest.approx(0.5)


def test_keys_tell_apart_model_hypothesis_text_and_label() -> None:
    base = key("m", "It is x.", "text", "x")
    assert base == key("m", "It is x.", "text", "x")
    others = [
        key("m2", "It is x.", "text", "x"),
        key("m", "It was x.", "text", "x"),
        key("m", "It is x.", "text!", "x"),
        key("m", "It is x.", "text", "y"),
    ]
    assert base not in others and len(set(others)) == 4


def test_one_text_s_keys_follow_its_labels_in_order() -> None:
    keys = cache_keys("m", "text", ["It is x.", "It is y."], ["x", "y"])
    assert keys == [key("m", "It is x.", "text", "x"), key("m", "It is y.", "text", "y")]
    with pytest.raises(ValueError):  # a hypothesis per label, never silently fewer keys
        cache_keys("m", "text", ["It is x."], ["x", "y"])


def test_a_zero_size_cache_is_off_and_keeps_nothing() -> None:
    cache = ResultCache(0)
    k = key("m", "It is x.", "a", "x")
    cache.put_many([k], [row(1)])
    assert not cache.enabled and cache.get_many([k]) == [None] and len(cache) == 0


def test_stored_rows_are_copies() -> None:
    cache = ResultCache(4)
    k, value = key("m", "It is x.", "a", "x"), row(1)
    cache.put_many([k], [value])
    value[0] = 99
    assert cache.get_many([k])[0][0] == 1
