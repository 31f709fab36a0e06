"""The result cache in a live Classifier replica: repeats are answered without the model."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.ray


def test_the_service_answers_repeats_from_the_cache(deploy_app) -> None:
    from ray import serve

    url = deploy_app("cached", result_cache_entries=1000)
    classifier = serve.get_deployment_handle("Classifier", app_name="cached")
    body = {
        "texts": ["Stocks rallied after earnings.", "Heavy rain tomorrow."],
        "labels": ["finance", "weather", "sports"],
    }
    first = httpx.post(f"{url}/v1/classify", json=body, timeout=60)
    assert first.status_code == 200, first.text
    stats = classifier.cache_stats.remote().result()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (0, 6, 6)
    # Same pairs, labels in another order and one new label: 6 hits, 2 misses (2 texts x 1).
    more_labels = {**body, "labels": ["sports", "finance", "weather", "art"]}
    again = httpx.post(f"{url}/v1/classify", json=more_labels, timeout=60)
    assert again.status_code == 200, again.text
    stats = classifier.cache_stats.remote().result()
    assert (stats["hits"], stats["misses"]) == (6, 8)
    # The first request again: answered from the cache alone, with the scores computing gave.
    repeat = httpx.post(f"{url}/v1/classify", json=body, timeout=60)
    assert repeat.status_code == 200, repeat.text
    stats = classifier.cache_stats.remote().result()
    assert (stats["hits"], stats["misses"]) == (12, 8)
    computed = first.json()["results"]
    assert len(computed) == len(body["texts"])
    for got, want in zip(repeat.json()["results"], computed, strict=True):
        assert got["sequence"] == want["sequence"]
        assert got["labels"] == want["labels"]
        assert np.allclose(got["scores"], want["scores"], atol=1e-6)
