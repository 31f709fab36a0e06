"""`POST /v1/classify` at the HTTP edge, in-process (tests/edge.py): answers, the model and docs
routes, malformed bodies and each configured limit as a JSON 4xx that names what to fix. The
same route over Ray is tests/integration/test_classify_serve.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from parity import assert_same_results
from transformers import pipeline


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def zsc_url(edge_server) -> str:
    return edge_server()


def test_one_text_field_answers_one_result(zsc_url: str, reference) -> None:
    body = {"text": "Engineers test an electric car.", "labels": "cars, art"}
    answer = httpx.post(f"{zsc_url}/v1/classify", json=body, timeout=30).json()
    assert_same_results(
        answer["results"], [reference(body["text"], candidate_labels=body["labels"])]
    )


def test_model_health_and_docs(zsc_url: str) -> None:
    assert httpx.get(f"{zsc_url}/healthz").json() == {"status": "ok"}
    model = httpx.get(f"{zsc_url}/v1/model").json()
    assert model["entailment_index"] == 1 and model["random_weights"] is True
    assert model["max_length"] == 64
    assert httpx.get(f"{zsc_url}/docs").status_code == 200
    spec = httpx.get(f"{zsc_url}/openapi.json").json()
    assert "/v1/classify" in spec["paths"]


BAD_BODIES = [
    ("not_json", b"this is not json", 400, "invalid_json"),
    ("json_array", b'["a"]', 400, "invalid_json"),
    ("truncated_json", b'{"texts": ["a"', 400, "invalid_json"),
    ("missing_labels", {"texts": ["a"]}, 422, "invalid_request"),
    ("missing_texts", {"labels": ["a"]}, 422, "invalid_request"),
    ("both_text_and_texts", {"text": "a", "texts": ["b"], "labels": ["a"]}, 422, "invalid_request"),
    ("texts_not_list", {"texts": "a", "labels": ["a"]}, 422, "invalid_request"),
    ("texts_of_numbers", {"texts": [1, 2], "labels": ["a"]}, 422, "invalid_request"),
    ("labels_number", {"texts": ["a"], "labels": 5}, 422, "invalid_request"),
    (
        "multi_label_string",
        {"texts": ["a"], "labels": ["x"], "multi_label": "yes"},
        422,
        "invalid_request",
    ),
    ("unknown_field", {"texts": ["a"], "labels": ["x"], "lables": ["y"]}, 422, "invalid_request"),
    ("empty_texts", {"texts": [], "labels": ["a"]}, 422, "invalid_request"),
    ("empty_labels", {"texts": ["a"], "labels": []}, 422, "invalid_request"),
    ("blank_label_string", {"texts": ["a"], "labels": " , ,"}, 422, "invalid_request"),
    ("empty_text", {"texts": ["ok", "  "], "labels": ["a"]}, 422, "invalid_request"),
    (
        "template_without_braces",
        {"text": "a", "labels": ["x"], "hypothesis_template": "No slot."},
        422,
        "invalid_request",
    ),
    (
        "template_two_slots",
        {"text": "a", "labels": ["x"], "hypothesis_template": "{} and {}"},
        422,
        "invalid_request",
    ),
    (
        "template_named_slot",
        {"text": "a", "labels": ["x"], "hypothesis_template": "{} is {name}"},
        422,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "error_type"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_malformed_bodies_get_a_json_4xx(
    zsc_url: str, name: str, body, status: int, error_type: str
) -> None:
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    response = httpx.post(f"{zsc_url}/v1/classify", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type and error["message"]
    # ...and the app keeps serving.
    ok = httpx.post(
        f"{zsc_url}/v1/classify", json={"text": "still up?", "labels": ["yes", "no"]}, timeout=30
    )
    assert ok.status_code == 200


@pytest.fixture(scope="module")
def limited_url(edge_server) -> str:
    return edge_server(
        limits={
            "max_texts": 3,
            "max_labels": 4,
            "max_pairs": 6,
            "max_text_chars": 50,
            "max_label_chars": 10,
            "max_template_chars": 30,
            "max_body_bytes": 2048,
            "max_json_depth": 5,
        },
    )


LIMIT_BREACHES = [
    ("max_texts", {"texts": ["a"] * 4, "labels": ["x"]}),
    ("max_labels", {"texts": ["a"], "labels": ["a", "b", "c", "d", "e"]}),
    ("max_pairs", {"texts": ["a", "b"], "labels": ["a", "b", "c", "d"]}),
    ("max_text_chars", {"texts": ["a" * 51], "labels": ["x"]}),
    ("max_label_chars", {"texts": ["a"], "labels": ["x" * 11]}),
    (
        "max_template_chars",
        {"texts": ["a"], "labels": ["x"], "hypothesis_template": "{}" + "." * 40},
    ),
    ("max_body_bytes", {"texts": ["a"], "labels": ["x"], "metadata_padding": "p" * 3000}),
    ("max_json_depth", {"texts": ["a"], "labels": ["x"], "deep": [[[[[["too deep"]]]]]]}),
]


@pytest.mark.parametrize(("limit", "body"), LIMIT_BREACHES, ids=[b[0] for b in LIMIT_BREACHES])
def test_each_limit_is_a_4xx_that_names_it(limited_url: str, limit: str, body: dict) -> None:
    response = httpx.post(f"{limited_url}/v1/classify", json=body, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert limit in response.json()["error"]["message"]
    ok = httpx.post(
        f"{limited_url}/v1/classify", json={"texts": ["a"], "labels": ["x"]}, timeout=30
    )
    assert ok.status_code == 200
