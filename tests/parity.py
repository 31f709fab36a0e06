"""Parity cases against `transformers`' zero-shot pipeline, shared by every serving path."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.core.nli import NLILabelIndices, score_texts
from serve_app.core.results import TextResult
from serve_app.devtools.test_models import _CORPUS

LONG_TEXT = "The central bank raised interest rates again to fight inflation. " * 30


@dataclass(frozen=True)
class Case:
    name: str
    texts: list[str]
    labels: list[str] | str
    template: str = "This example is {}."
    multi_label: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {
            "candidate_labels": self.labels,
            "hypothesis_template": self.template,
            "multi_label": self.multi_label,
        }

    def body(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "labels": self.labels,
            "hypothesis_template": self.template,
            "multi_label": self.multi_label,
        }


CASES = [
    Case(
        "single_label",
        ["The new phone's battery lasts two days."],
        ["technology", "sports", "politics"],
    ),
    Case(
        "multi_label",
        ["Our team won the final after penalties."],
        ["sports", "joy", "weather"],
        multi_label=True,
    ),
    Case("one_label", ["Heavy rain is expected tomorrow."], ["weather"]),
    Case(
        "custom_template",
        ["Please cancel my subscription."],
        ["urgent", "not urgent"],
        template="The customer is {}.",
    ),
    Case("comma_string_labels", ["Stocks rallied after earnings."], " finance, sports ,, travel "),
    Case(
        "duplicate_labels", ["A delayed flight stranded travellers."], ["travel", "food", "travel"]
    ),
    Case("longer_than_window", [LONG_TEXT], ["finance", "sports"]),
    Case(
        "many_texts",
        [
            f"Sentence number {i} about {topic}."
            for i, topic in enumerate(
                ["music", "movies", "food", "science", "health", "travel", "business", "art"] * 3
            )
        ],
        ["music", "science", "business", "health", "travel"],
    ),
    Case(
        "many_texts_multi",
        [f"Text {i}: engineers test a car." for i in range(7)],
        ["cars", "art"],
        multi_label=True,
    ),
]


def as_list(results: Any) -> list[dict[str, Any]]:
    return results if isinstance(results, list) else [results]


def assert_same_results(
    ours: list[dict[str, Any]], ref: list[dict[str, Any]], tol: float = 1e-5
) -> None:
    """Same sequences, labels in the same order, scores within tol."""
    assert len(ours) == len(ref)
    for got, want in zip(ours, ref):
        assert got["sequence"] == want["sequence"]
        assert len(got["labels"]) == len(want["labels"])
        for g, w in zip(got["scores"], want["scores"]):
            assert abs(g - w) <= tol, (got, want)
        # Labels must be in the same order, except among scores too close to call.
        for i, (gl, wl) in enumerate(zip(got["labels"], want["labels"])):
            if gl != wl:
                assert abs(got["scores"][i] - want["scores"][i]) <= tol
                assert wl in got["labels"], (got, want)


def classify_from_logits(
    texts: Sequence[str],
    labels: Sequence[str],
    logits: np.ndarray,
    indices: NLILabelIndices,
    multi_label: bool,
) -> list[TextResult]:
    """`score_texts` where every text has the same labels (the pipeline's case)."""
    return score_texts(texts, [labels] * len(texts), logits, indices, multi_label)


def mixed_texts(n: int = 20, seed: int = 5) -> list[str]:
    """Texts from 1 to ~60 words: lengths that pad each other in a batch, some past the window."""
    words = _CORPUS.split()
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.choice([1, 3, 8, 15, 30, 60]))) for _ in range(n)]
