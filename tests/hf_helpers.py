"""What the Hugging Face route tests share: the texts, labels and key they send, the real
InferenceClient pointed at a URL, and /v1/classify's answer to compare with."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from huggingface_hub import InferenceClient

from serve_app.config import LimitsConfig

TEXT = "The striker scored twice in the last ten minutes of the final."
TEXTS = [TEXT, "Simmer the onions slowly in butter until golden.", "Parliament passed the bill."]
LABELS = ["sports", "cooking", "politics"]
TEMPLATE = "This text is about {}."
# Random per run, so a key or token found in a log can only have come from this run.
KEY = "alice-" + secrets.token_hex(12)
WRONG_KEY = "wrong-" + secrets.token_hex(12)
BURST = 10  # pairs; RATE pairs come back per second
RATE = 1
COSTLY = [f"label {i}" for i in range(9)]  # 9 pairs for one text: a drained bucket needs 8 s
LIMITS = LimitsConfig()  # the defaults every app below runs with

Scored = list[tuple[str, float]]


def client(url: str, **kwargs: Any) -> InferenceClient:
    return InferenceClient(base_url=url, timeout=60, **kwargs)


def scored(elements: list[Any]) -> Scored:
    """InferenceClient's ZeroShotClassificationOutputElements (or the JSON dicts) as pairs."""
    return [
        (e["label"], e["score"]) if isinstance(e, dict) else (e.label, e.score) for e in elements
    ]


def classify(
    url: str,
    texts: list[str],
    labels: list[str],
    *,
    multi_label: bool = False,
    template: str | None = None,
    headers: dict[str, str] | None = None,
) -> list[Scored]:
    """What /v1/classify answers for the same request: each text's (label, score) in order."""
    body: dict[str, Any] = {"texts": texts, "labels": labels, "multi_label": multi_label}
    if template is not None:
        body["hypothesis_template"] = template
    response = httpx.post(f"{url}/v1/classify", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return [list(zip(r["labels"], r["scores"])) for r in response.json()["results"]]


def assert_ranked(answer: Scored, labels: list[str]) -> None:
    assert sorted(label for label, _ in answer) == sorted(labels)
    scores = [score for _, score in answer]
    assert scores == sorted(scores, reverse=True), "labels are not sorted by score"


def hf_post(url: str, body: Any, path: str = "/", **kwargs: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60, **kwargs)


def classify_status(url: str, labels: list[str]) -> int:
    return httpx.post(
        f"{url}/v1/classify", json={"text": TEXT, "labels": labels}, timeout=60
    ).status_code


def labels_named(n: int) -> list[str]:
    return [f"label {i}" for i in range(n)]
