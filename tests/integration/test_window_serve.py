"""A text of 2,000 tokens over HTTP: answered, and reported as truncated."""

from __future__ import annotations

import pytest

LONG = "The central bank raised interest rates again to fight inflation. " * 170
LABELS = ["finance", "sports"]

pytestmark = pytest.mark.ray


def test_a_2000_token_text_over_http_answers_200_and_is_reported(zsc_url: str) -> None:
    import httpx

    body = {"texts": [LONG, "Our team won the final."], "labels": LABELS}
    response = httpx.post(f"{zsc_url}/v1/classify", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["truncated"] == [0]
