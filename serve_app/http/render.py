"""zsc's own answer body, rendered from the engine's typed `Classification`."""

from __future__ import annotations

from typing import Any

from serve_app.core.results import Classification


def usage(classification: Classification) -> dict[str, int]:
    out = {"pairs": classification.pairs}
    if classification.prefilter is not None:
        out["labels_considered"] = classification.prefilter.labels_considered
        out["labels_scored"] = classification.prefilter.labels_scored
    return out


def classify_response_body(classification: Classification) -> dict[str, Any]:
    """The body of `POST /v1/classify` (and of `handle.classify.remote`)."""
    body: dict[str, Any] = {
        "model": classification.model,
        "results": [result.as_dict() for result in classification.results],
        "usage": usage(classification),
        "truncated": classification.truncated,
    }
    if classification.warning is not None:
        body["warning"] = classification.warning
    return body
