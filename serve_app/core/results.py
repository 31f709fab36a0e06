"""What the engine answers: typed results that every API shape renders its own way.

`TextResult` is one text's answer, shaped and ordered like the `transformers` pipeline's output
dict; `Classification` is one request's answer. Routes turn them into zsc's body
(`serve_app.http.render`) or Hugging Face's; the job runner stores `TextResult.as_dict()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RANDOM_MODEL_WARNING = (
    "This is a random test model: its scores are random and mean nothing. "
    "Serve a real NLI model for real answers."
)


@dataclass(frozen=True)
class TextResult:
    """One text's labels, highest score first, as the pipeline orders them."""

    sequence: str
    labels: list[str]
    scores: list[float]
    # With a threshold: the labels at or above it (empty: none of these); else absent.
    predicted: list[str] | None = None
    # With long_text=chunk: how many windows of the text were scored; else absent.
    windows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sequence": self.sequence,
            "labels": self.labels,
            "scores": self.scores,
        }
        if self.predicted is not None:
            out["predicted"] = self.predicted
        if self.windows is not None:
            out["windows"] = self.windows
        return out


@dataclass(frozen=True)
class PrefilterUsage:
    """How many labels the request had, and how many the cross-encoder scored per text."""

    labels_considered: int
    labels_scored: int


@dataclass(frozen=True)
class Classification:
    """One request's answer: a result per text, in the order of the texts."""

    model: str
    results: list[TextResult]
    pairs: int
    truncated: list[int] = field(default_factory=list)  # indices of texts cut to the window
    random_weights: bool = False
    prefilter: PrefilterUsage | None = None

    @property
    def warning(self) -> str | None:
        return RANDOM_MODEL_WARNING if self.random_weights else None
