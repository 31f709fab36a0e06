"""The pure scoring path (NLIModel + nli) against the transformers pipeline, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import pipeline

from parity import CASES, Case, as_list, assert_same_results
from serve_app.config import ModelConfig
from serve_app.model import NLIModel
from serve_app.nli import classify_from_logits, parse_labels
from serve_app.testing import build_test_model


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> NLIModel:
    return NLIModel(ModelConfig(model=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


def score(model: NLIModel, case: Case, max_batch_tokens: int = 4096) -> list[dict]:
    labels = parse_labels(case.labels)
    encoded = model.encode(case.texts, labels, case.template)
    logits = model.forward(encoded.pairs, max_batch_tokens)
    return classify_from_logits(case.texts, labels, logits, model.indices, case.multi_label)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_scores_equal_the_pipeline(model: NLIModel, reference, case: Case) -> None:
    ref = as_list(reference(case.texts, **case.pipeline_kwargs()))
    assert_same_results(score(model, case), ref)


def test_small_token_budgets_split_batches_without_changing_scores(model: NLIModel, reference) -> None:
    case = next(c for c in CASES if c.name == "many_texts")
    ref = as_list(reference(case.texts, **case.pipeline_kwargs()))
    assert_same_results(score(model, case, max_batch_tokens=64), ref)


def test_the_window_truncates_only_the_premise_and_is_reported(model: NLIModel) -> None:
    case = next(c for c in CASES if c.name == "longer_than_window")
    encoded = model.encode(case.texts + ["short"], ["finance"], case.template)
    assert encoded.truncated == [0]
    assert len(encoded.pairs[0][0]) == model.window
    hypothesis_ids = model.tokenizer("This example is finance.", add_special_tokens=False)["input_ids"]
    # The hypothesis survives whole at the end: <s> premise... </s></s> hypothesis </s>
    assert list(encoded.pairs[0][0][-len(hypothesis_ids) - 1 : -1]) == hypothesis_ids


def test_identical_pairs_are_computed_once_and_answered_for_each(model: NLIModel) -> None:
    encoded = model.encode(["same text"] * 3, ["a", "a"], "This example is {}.")
    logits = model.forward(encoded.pairs)
    assert logits.shape == (6, 3)
    assert np.allclose(logits, logits[0])


@pytest.mark.parametrize(
    "label_order",
    [("entailment", "neutral", "contradiction"), ("neutral", "entailment", "contradiction")],
    ids=["entailment_first", "neutral_first"],
)
def test_other_label_maps_give_correct_scores(tmp_path: Path, label_order: tuple[str, ...]) -> None:
    directory = build_test_model(tmp_path / "m", label_order=label_order, seed=3)
    model = NLIModel(ModelConfig(model=str(directory)))
    ent, con = label_order.index("entailment"), label_order.index("contradiction")
    assert (model.indices.entailment, model.indices.contradiction) == (ent, con)

    texts, labels = ["Doctors recommend regular exercise."], ["health", "finance", "music"]
    encoded = model.encode(texts, labels, "This example is {}.")
    logits = model.forward(encoded.pairs)
    # Reference computed here from the raw logits and the definition of each mode.
    single = classify_from_logits(texts, labels, logits, model.indices, multi_label=False)[0]
    e = np.exp(logits[:, ent] - logits[:, ent].max())
    expected_single = dict(zip(labels, e / e.sum()))
    for label, s in zip(single["labels"], single["scores"]):
        assert abs(s - expected_single[label]) < 1e-6

    multi = classify_from_logits(texts, labels, logits, model.indices, multi_label=True)[0]
    expected_multi = dict(zip(labels, 1 / (1 + np.exp(logits[:, con] - logits[:, ent]))))
    for label, s in zip(multi["labels"], multi["scores"]):
        assert abs(s - expected_multi[label]) < 1e-6

    # Single-label mode does not involve contradiction, so it must equal the pipeline for both.
    ref = pipeline("zero-shot-classification", model=str(directory), device="cpu")
    assert_same_results([single], [ref(texts[0], candidate_labels=labels)])
    if label_order[0] == "entailment":
        # The pipeline picks index -1 here, which is contradiction: equal in multi-label too.
        assert_same_results([multi], [ref(texts[0], candidate_labels=labels, multi_label=True)])
