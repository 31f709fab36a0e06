"""threshold and `predicted`, the request fields' validation and server defaults, through the
FastAPI app in-process over a real Engine (tests/edge.py), plus the pure rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from edge import openapi, post

from serve_app.config import ModelConfig
from serve_app.core.chunks import predicted
from serve_app.engine.engine import Engine

TEXT = "The football team won the final after penalties."
LABELS = ["sports", "finance", "weather", "music"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))


def classify(engine: Engine, **body: Any) -> dict[str, Any]:
    answer = post(engine, "/v1/classify", {"text": TEXT, "labels": LABELS, **body})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["results"][0]
    return result


def test_predicted_rule() -> None:
    assert predicted(["a", "b", "c"], [0.6, 0.3, 0.1], 0.3, multi_label=True) == ["a", "b"]
    assert predicted(["a", "b"], [0.6, 0.4], 0.5, multi_label=False) == ["a"]
    assert predicted(["a", "b"], [0.6, 0.4], 0.7, multi_label=False) == []
    assert predicted(["a", "b"], [0.2, 0.1], 0.5, multi_label=True) == []


def test_multi_label_predicts_every_label_at_or_above_the_threshold(engine: Engine) -> None:
    plain = classify(engine, multi_label=True)
    assert "predicted" not in plain  # no threshold, no field
    middle = sorted(plain["scores"])[1]  # all but the lowest score pass
    result = classify(engine, multi_label=True, threshold=middle)
    assert result["scores"] == plain["scores"]  # a threshold changes no score
    assert result["predicted"] == [
        label for label, score in zip(plain["labels"], plain["scores"]) if score >= middle
    ]
    assert len(result["predicted"]) == len(LABELS) - 1
    assert classify(engine, multi_label=True, threshold=1.0)["predicted"] == []
    assert classify(engine, multi_label=True, threshold=0)["predicted"] == plain["labels"]


def test_single_label_predicts_the_top_label_or_none_of_these(engine: Engine) -> None:
    plain = classify(engine)
    top = plain["scores"][0]
    assert classify(engine, threshold=top)["predicted"] == [plain["labels"][0]]
    assert classify(engine, threshold=min(1.0, top + 1e-3))["predicted"] == []


def test_the_app_config_sets_defaults_a_request_can_override(engine: Engine) -> None:
    defaults = {"threshold": 0.0, "multi_label": True, "hypothesis_template": "It is {}."}
    body = {"text": TEXT, "labels": LABELS}
    answer = post(engine, "/v1/classify", body, defaults=defaults).json()["results"][0]
    assert answer["predicted"] == answer["labels"]  # threshold 0: every label
    single = post(
        engine, "/v1/classify", {**body, "multi_label": False, "hypothesis_template": "It is {}."}
    ).json()["results"][0]
    assert single["scores"] != answer["scores"]  # multi-label came from the defaults
    explicit = post(
        engine,
        "/v1/classify",
        {**body, "multi_label": True, "hypothesis_template": "It is {}."},
    ).json()["results"][0]
    assert explicit["scores"] == answer["scores"]  # the default template was used
    overridden = post(
        engine, "/v1/classify", {**body, "threshold": 1.0, "multi_label": False}, defaults=defaults
    ).json()["results"][0]
    assert overridden["predicted"] == []
    assert abs(sum(overridden["scores"]) - 1.0) < 1e-5


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("threshold", 1.5, "threshold"),
        ("threshold", -0.1, "threshold"),
        ("threshold", "0.5", "threshold"),
        ("threshold", True, "threshold"),
        ("long_text", "split", "long_text"),
        ("chunk_stride", -1, "chunk_stride"),
        ("chunk_stride", 2.5, "chunk_stride"),
        ("chunk_aggregate", "sum", "chunk_aggregate"),
    ],
)
def test_a_wrong_value_is_a_422_naming_the_field(
    engine: Engine, field: str, value: Any, says: str
) -> None:
    answer = post(engine, "/v1/classify", {"text": TEXT, "labels": LABELS, field: value})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert says in error["message"] and error["type"]


def test_a_chunked_request_is_charged_max_chunks_windows_per_text(engine: Engine) -> None:
    body = {"texts": [TEXT] * 4, "labels": LABELS, "long_text": "chunk"}
    limits = {"max_pairs": 4 * len(LABELS) * 3, "max_chunks": 4}
    answer = post(engine, "/v1/classify", body, limits=limits)
    assert answer.status_code == 413, answer.text
    assert "limits.max_chunks" in answer.json()["error"]["message"]
    ok = post(engine, "/v1/classify", body, limits={**limits, "max_chunks": 3})
    assert ok.status_code == 200
    assert ok.json()["usage"]["pairs"] == 4 * len(LABELS)  # what ran: one window each
    assert [r["windows"] for r in ok.json()["results"]] == [1, 1, 1, 1]


def test_a_stride_too_large_for_the_window_is_a_422(engine: Engine) -> None:
    body = {"text": TEXT, "labels": LABELS, "long_text": "chunk", "chunk_stride": 500}
    answer = post(engine, "/v1/classify", body)
    assert answer.status_code == 422
    assert "chunk_stride=500 must be smaller" in answer.json()["error"]["message"]


def test_hugging_face_parameters_take_threshold_and_long_text(engine: Engine) -> None:
    params = {"candidate_labels": LABELS, "multi_label": True}
    full = post(engine, "/", {"inputs": TEXT, "parameters": params}).json()
    cut = full[1]["score"]
    kept = post(
        engine,
        "/",
        {"inputs": TEXT, "parameters": {**params, "threshold": cut, "long_text": "chunk"}},
    )
    assert kept.status_code == 200, kept.text
    assert kept.json() == full[:2]  # the labels at or above the threshold, same shape
    bad = post(engine, "/", {"inputs": TEXT, "parameters": {**params, "threshold": 2}})
    assert bad.status_code == 422 and "threshold" in bad.json()["error"]["message"]


def test_openapi_documents_the_fields(engine: Engine) -> None:
    schemas = openapi(engine)["components"]["schemas"]
    fields = schemas["ClassifyRequest"]["properties"]
    for name in ("long_text", "chunk_stride", "chunk_aggregate", "threshold", "labels"):
        assert fields[name].get("description"), name
    assert "LabelObject" in schemas
    result = schemas["TextResult"]["properties"]
    assert "predicted" in result and "windows" in result
    assert "threshold" in schemas["HFParameters"]["properties"]
