"""The zero-shot math without a model: label parsing, label maps, normalisation, ordering."""

from __future__ import annotations

import numpy as np
import pytest
from parity import classify_from_logits

from serve_app.core import nli
from serve_app.core.nli import ModelLabelError, NLILabelIndices


def test_parse_labels_splits_like_the_pipeline() -> None:
    assert nli.parse_labels(" sports, politics ,,tech ,") == ["sports", "politics", "tech"]
    assert nli.parse_labels(["a, b", "c"]) == ["a, b", "c"]  # lists pass through untouched


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "contradiction", 1: "entailment", 2: "neutral"}, NLILabelIndices(1, 0)),
        ({0: "ENTAILMENT", 1: "neutral", 2: "CONTRADICTION"}, NLILabelIndices(0, 2)),
        ({0: "contradiction", 1: "neutral", 2: "entailment"}, NLILabelIndices(2, 0)),
        # Where the pipeline's hard-coded index 0 would pick "neutral":
        ({0: "neutral", 1: "entailment", 2: "contradiction"}, NLILabelIndices(1, 2)),
        # Two-label models: the other label stands in for contradiction.
        ({0: "entailment", 1: "not_entailment"}, NLILabelIndices(0, 1)),
        ({0: "not_entailment", 1: "entailment"}, NLILabelIndices(1, 0)),
    ],
)
def test_label_indices_come_from_the_label_map(id2label: dict, expected: NLILabelIndices) -> None:
    assert nli.nli_label_indices(id2label) == expected


def test_a_model_without_entailment_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ModelLabelError, match="no label starting with 'entail'"):
        nli.nli_label_indices({0: "LABEL_0", 1: "LABEL_1"})


def test_single_label_scores_are_a_softmax_across_labels() -> None:
    idx = NLILabelIndices(entailment=1, contradiction=0)
    logits = np.array([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [5.0, -1.0, 0.0]], dtype=np.float32)
    scores = nli.label_scores(logits, idx, multi_label=False)
    expected = np.exp([2.0, 1.0, -1.0]) / np.exp([2.0, 1.0, -1.0]).sum()
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_multi_label_scores_are_entailment_vs_contradiction_per_label() -> None:
    idx = NLILabelIndices(entailment=1, contradiction=2)  # neutral first, as in some models
    logits = np.array([[9.0, 1.0, 0.0], [-3.0, 0.0, 2.0]], dtype=np.float32)
    scores = nli.label_scores(logits, idx, multi_label=True)
    expected = [1 / (1 + np.exp(0.0 - 1.0)), 1 / (1 + np.exp(2.0 - 0.0))]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_one_label_is_always_scored_multi_label_style() -> None:
    idx = NLILabelIndices(entailment=1, contradiction=0)
    logits = np.array([[0.5, 1.5, 3.0]], dtype=np.float32)
    single = nli.label_scores(logits, idx, multi_label=False)
    np.testing.assert_allclose(single, [1 / (1 + np.exp(0.5 - 1.5))], rtol=1e-6)


def test_huge_logits_do_not_overflow() -> None:
    idx = NLILabelIndices(entailment=1, contradiction=0)
    logits = np.array([[0.0, 1000.0, 0.0], [0.0, 999.0, 0.0]], dtype=np.float32)
    scores = nli.label_scores(logits, idx, multi_label=False)
    # Only the difference counts: the same scores as logits 1 and 0 (finite is not enough).
    expected = [1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    multi = nli.label_scores(np.array([[-1000.0, 1000.0, 0.0]], dtype=np.float32), idx, True)
    np.testing.assert_allclose(multi, [1.0], rtol=1e-6)


def test_results_are_sorted_by_score_and_grouped_per_text() -> None:
    idx = NLILabelIndices(entailment=1, contradiction=0)
    logits = np.array(
        [[0, 1, 0], [0, 3, 0], [0, 2, 0], [0, 0, 0], [0, -1, 0], [0, 4, 0]], dtype=np.float32
    )
    results = classify_from_logits(["t1", "t2"], ["a", "b", "c"], logits, idx, False)
    assert [r.sequence for r in results] == ["t1", "t2"]
    assert results[0].labels == ["b", "c", "a"]
    assert results[1].labels == ["c", "a", "b"]
    for r in results:
        assert r.scores == sorted(r.scores, reverse=True)
        assert abs(sum(r.scores) - 1.0) < 1e-6


def test_equal_scores_keep_the_pipeline_tie_order() -> None:
    # The pipeline ranks with list(reversed(scores.argsort())): equal scores come out in reverse
    # label order. Parity with it on ties means the same order, not just the same scores.
    idx = NLILabelIndices(entailment=1, contradiction=0)
    logits = np.array([[0, 2, 0], [0, 5, 0], [0, 2, 0], [0, 2, 0]], dtype=np.float32)
    [result] = classify_from_logits(["t"], ["a", "b", "c", "d"], logits, idx, False)
    assert result.labels == ["b", "d", "c", "a"]


def test_wrong_logit_count_is_an_error() -> None:
    idx = NLILabelIndices(entailment=1, contradiction=0)
    with pytest.raises(ValueError, match="expected 4 rows"):
        classify_from_logits(["a", "b"], ["x", "y"], np.zeros((3, 3)), idx, False)
