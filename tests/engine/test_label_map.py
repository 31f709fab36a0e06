"""`label_map`: a model whose config names its outputs LABEL_0, LABEL_1, ... stops at start with
one line naming the fix; with the map it serves, and `/v1/classify` equals a direct computation
with the model (softmax over the entailment logits, or over [contradiction, entailment])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from edge import call
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from serve_app.app import StartupError, build_app
from serve_app.config import AppConfig
from serve_app.core.nli import ModelLabelError, NLILabelIndices, nli_label_indices
from serve_app.devtools.test_models import build_test_model
from serve_app.engine.engine import Engine

UNNAMED = ("LABEL_0", "LABEL_1", "LABEL_2")
# Entailment at 1, not at the end: the pipeline's fallback (the last output) would be wrong.
MAP = {"entailment": 1, "contradiction": 0}
TEXTS = ["The new phone's battery lasts two days.", "Our team won the final after penalties."]
LABELS = ["technology", "sports", "politics"]
TEMPLATE = "This example is {}."


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("unnamed") / "m", label_order=UNNAMED)


def direct_scores(directory: Path, text: str, multi_label: bool) -> dict[str, float]:
    """The zero-shot math by hand on the model's own logits, one pair at a time."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    rows = []
    with torch.no_grad():
        for label in LABELS:
            inputs = tokenizer(text, TEMPLATE.format(label), return_tensors="pt")
            rows.append(model(**inputs).logits[0].numpy().astype(np.float64))
    logits = np.stack(rows)
    e, c = MAP["entailment"], MAP["contradiction"]
    if multi_label:
        pair = np.exp(logits[:, [c, e]])
        scores = pair[:, 1] / pair.sum(axis=1)
    else:
        ent = np.exp(logits[:, e] - logits[:, e].max())
        scores = ent / ent.sum()
    return dict(zip(LABELS, scores.tolist()))


def test_unnamed_outputs_stop_the_start_with_one_line_naming_label_map(unnamed: Path) -> None:
    with pytest.raises(StartupError) as info:
        build_app(AppConfig(model=str(unnamed)))
    message = str(info.value)
    assert "\n" not in message
    assert "'LABEL_0'" in message
    assert "label_map: {entailment: 2, contradiction: 0}" in message  # from its 3 outputs


def test_label_map_outside_the_outputs_stops_the_start(unnamed: Path) -> None:
    with pytest.raises(StartupError, match=r"label_map.entailment=3 is not an output") as info:
        build_app(AppConfig(model=str(unnamed), label_map={"entailment": 3}))
    assert "\n" not in str(info.value) and "0..2" in str(info.value)
    with pytest.raises(ValueError, match="label_map"):
        AppConfig.model_validate({"model": str(unnamed), "label_map": {"entailment": -1}})
    with pytest.raises(ValueError, match="label_map"):
        AppConfig.model_validate({"model": str(unnamed), "label_map": {"neutral": 1}})


def test_label_map_starts(unnamed: Path) -> None:
    build_app(AppConfig(model=str(unnamed), label_map=MAP))  # no StartupError


@pytest.mark.parametrize("multi_label", [False, True], ids=["single", "multi"])
def test_classify_with_label_map_equals_a_direct_computation(
    unnamed: Path, multi_label: bool
) -> None:
    config = AppConfig(model=str(unnamed), label_map=MAP)
    engine = Engine(config.model_settings(), str(unnamed))
    body = {"texts": TEXTS, "labels": LABELS, "multi_label": multi_label}
    response = call(config, engine, "POST", "/v1/classify", json=body)
    assert response.status_code == 200, response.text
    for text, result in zip(TEXTS, response.json()["results"]):
        expected = direct_scores(unnamed, text, multi_label)
        got = dict(zip(result["labels"], result["scores"]))
        assert got.keys() == expected.keys()
        for label in LABELS:
            assert got[label] == pytest.approx(expected[label], abs=1e-5)
    info = call(config, engine, "GET", "/v1/model").json()
    assert (info["entailment_index"], info["contradiction_index"]) == (1, 0)


def test_label_map_names_the_indices() -> None:
    named = {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert nli_label_indices(named, {"entailment": 2, "contradiction": 1}) == NLILabelIndices(2, 1)
    # Contradiction is optional: a two-output model's other output stands in.
    assert nli_label_indices({0: "LABEL_0", 1: "LABEL_1"}, {"entailment": 0}) == NLILabelIndices(
        0, 1
    )
    assert nli_label_indices(dict(enumerate(UNNAMED)), {"entailment": 2}) == NLILabelIndices(2, 0)
    with pytest.raises(ModelLabelError, match="both output 1"):
        nli_label_indices(dict(enumerate(UNNAMED)), {"entailment": 1, "contradiction": 1})
    with pytest.raises(ModelLabelError, match="label_map: {entailment: 1}"):
        nli_label_indices({0: "LABEL_0", 1: "LABEL_1"})
