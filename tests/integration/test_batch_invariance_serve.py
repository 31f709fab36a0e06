"""Concurrent requests over HTTP get, to 1e-5, the scores each gets alone, whatever shares their batch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from parity import mixed_texts

TOLERANCE = 1e-5
LABELS = ["finance", "sports", "weather", "technology"]
BACKENDS = {
    "torch": {"backend": "torch"},
    "int8": {"backend": "int8"},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "onnx_file": "onnx/model_qint8_avx512_vnni.onnx"},
}

pytestmark = pytest.mark.ray


def test_concurrent_requests_get_what_each_gets_alone(zsc_url: str) -> None:
    texts = mixed_texts(seed=9)

    def classify(text: str) -> list[float]:
        body = {"texts": [text], "labels": LABELS, "multi_label": True}
        # The session app has no result cache (the default): every call runs the model.
        response = httpx.post(f"{zsc_url}/v1/classify", json=body, timeout=60)
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        return [dict(zip(result["labels"], result["scores"]))[label] for label in LABELS]

    alone = [classify(text) for text in texts]
    with ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(classify, texts))
    worst = max(abs(a - b) for x, y in zip(alone, together) for a, b in zip(x, y))
    assert worst <= TOLERANCE
