"""Properties of the zero-shot math (serve_app.core.nli) over generated logits and label maps.

Logits range over +-1e4, far beyond any real model's (|x| < 30) and enough to overflow a naive
exp, so these also show the normalisation never yields NaN or inf. Expected scores come from
the definition (`reference_scores`, in float64 with `math`), never from the code under test.
"""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from parity import classify_from_logits

from serve_app.core.nli import NLILabelIndices, label_scores

MAX_LABELS = 64  # LimitsConfig.max_labels' default
LOGIT = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@st.composite
def label_map(draw: st.DrawFn) -> tuple[int, NLILabelIndices]:
    """A number of NLI classes (2 or 3) and where entailment and contradiction sit in it."""
    n_classes = draw(st.sampled_from([2, 3]))
    entailment, contradiction = draw(st.permutations(range(n_classes)))[:2]
    return n_classes, NLILabelIndices(entailment=entailment, contradiction=contradiction)


@st.composite
def logits_for_one_text(draw: st.DrawFn, min_labels: int = 1) -> tuple[np.ndarray, NLILabelIndices]:
    n_classes, indices = draw(label_map())
    n_labels = draw(st.integers(min_labels, MAX_LABELS))
    values = draw(st.lists(LOGIT, min_size=n_labels * n_classes, max_size=n_labels * n_classes))
    return np.array(values, dtype=np.float32).reshape(n_labels, n_classes), indices


def softmax(values: list[float]) -> list[float]:
    top = max(values)  # exp(v - top) <= 1: no overflow at any logit
    exps = [math.exp(v - top) for v in values]
    total = math.fsum(exps)
    return [e / total for e in exps]


def reference_scores(rows: np.ndarray, indices: NLILabelIndices, multi_label: bool) -> list[float]:
    """The pipeline's definition: single-label, a softmax of the entailment logits across the
    labels; multi-label (and any single label), per label a softmax over [contradiction,
    entailment], whose entailment share is the score."""
    e, c = indices.entailment, indices.contradiction
    if multi_label or len(rows) == 1:
        return [softmax([float(row[c]), float(row[e])])[1] for row in rows]
    return softmax([float(row[e]) for row in rows])


@given(logits_for_one_text(min_labels=2))
def test_single_label_scores_sum_to_one(case: tuple[np.ndarray, NLILabelIndices]) -> None:
    logits, indices = case
    scores = label_scores(logits, indices, multi_label=False)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0) & (scores <= 1))
    assert abs(float(scores.sum(dtype=np.float64)) - 1.0) < 1e-5


@given(logits_for_one_text(), st.booleans())
def test_multi_label_scores_lie_in_unit_interval(
    case: tuple[np.ndarray, NLILabelIndices], multi_label: bool
) -> None:
    logits, indices = case
    # One label is scored like multi-label whatever the flag says, as in the pipeline.
    scores = label_scores(logits, indices, multi_label=multi_label or len(logits) == 1)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0) & (scores <= 1))


@given(logits_for_one_text(), st.booleans(), st.randoms(use_true_random=False))
def test_permuting_the_labels_permutes_the_scores(
    case: tuple[np.ndarray, NLILabelIndices], multi_label: bool, rng: random.Random
) -> None:
    logits, indices = case
    order = list(range(len(logits)))
    rng.shuffle(order)
    scores = label_scores(logits, indices, multi_label)
    permuted = label_scores(logits[order], indices, multi_label)
    np.testing.assert_allclose(permuted, scores[order], rtol=1e-5, atol=1e-7)


@settings(max_examples=50)
@given(
    label_map(),
    st.integers(1, 4),
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True),
    st.booleans(),
    st.data(),
)
def test_results_are_sorted_descending_and_keep_every_label(
    classes: tuple[int, NLILabelIndices],
    n_texts: int,
    labels: list[str],
    multi_label: bool,
    data: st.DataObject,
) -> None:
    n_classes, indices = classes
    rows = n_texts * len(labels) * n_classes
    values = data.draw(st.lists(LOGIT, min_size=rows, max_size=rows))
    logits = np.array(values, dtype=np.float32).reshape(n_texts * len(labels), n_classes)
    texts = [f"text {i}" for i in range(n_texts)]

    results = classify_from_logits(texts, labels, logits, indices, multi_label)

    assert [r.sequence for r in results] == texts
    for i, result in enumerate(results):
        assert sorted(result.labels) == sorted(labels)
        assert result.scores == sorted(result.scores, reverse=True)
        # Each label keeps its own score through the sort, and that score is the definition's.
        expected = reference_scores(
            logits[i * len(labels) : (i + 1) * len(labels)], indices, multi_label
        )
        by_label = dict(zip(result.labels, result.scores, strict=True))
        got = [by_label[label] for label in labels]
        # float32 arithmetic against float64: a few ulps of the larger scores.
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
