"""The Hugging Face task routes (`POST /`, `POST /predict`) of the real FastAPI app, served in
this process on a real socket (tests/edge.py), driven by the real
`huggingface_hub.InferenceClient` and by plain httpx: every answer equals `/v1/classify`'s on
the same body, every mistake is its 4xx, API keys and the rate limit apply, and the Hugging
Face token the client sends on its own is never echoed (tests/integration/test_hf_serve.py
checks Serve's logs on the live app).

`tests/conftest.py` sets HF_HUB_OFFLINE=1, under which the client refuses every URL, the local
one too. It reads that once, at import, so the `hf_client_online` fixture patches the constants
in this process (the server runs in Ray's processes and never sees them).
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from hf_helpers import (
    BURST,
    COSTLY,
    KEY,
    LABELS,
    LIMITS,
    RATE,
    TEMPLATE,
    TEXT,
    TEXTS,
    WRONG_KEY,
    assert_ranked,
    classify,
    classify_status,
    client,
    hf_post,
    labels_named,
    scored,
)
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from live import wait_for

from serve_app.core.keys import hash_key
from serve_app.core.results import RANDOM_MODEL_WARNING
from serve_app.http.middleware.auth import SCHEME_NAME

pytestmark = pytest.mark.usefixtures("hf_client_online")


@pytest.fixture(scope="module")
def zsc_url(edge_server) -> str:
    return edge_server()


@pytest.fixture(scope="module")
def keys_url(edge_server) -> str:
    return edge_server(auth={"api_key_hashes": {"alice": hash_key(KEY)}})


@pytest.fixture(scope="module")
def limited_url(edge_server) -> str:
    # Auth is off: every request from this process pays from the bucket of 127.0.0.1.
    return edge_server(rate_limit={"enabled": True, "default": {"rate": RATE, "burst": BURST}})


# ---- the real InferenceClient ----------------------------------------------------------------


def test_client_single_label(zsc_url: str) -> None:
    answer = scored(client(zsc_url).zero_shot_classification(TEXT, candidate_labels=LABELS))
    assert_ranked(answer, LABELS)
    assert sum(score for _, score in answer) == pytest.approx(1.0, abs=1e-5)
    assert answer == classify(zsc_url, [TEXT], LABELS)[0]


def test_client_multi_label(zsc_url: str) -> None:
    answer = scored(
        client(zsc_url).zero_shot_classification(TEXT, candidate_labels=LABELS, multi_label=True)
    )
    assert_ranked(answer, LABELS)
    assert answer == classify(zsc_url, [TEXT], LABELS, multi_label=True)[0]
    assert answer != classify(zsc_url, [TEXT], LABELS)[0]  # the flag reached the engine


def test_client_custom_template(zsc_url: str) -> None:
    answer = scored(
        client(zsc_url).zero_shot_classification(TEXT, LABELS, hypothesis_template=TEMPLATE)
    )
    assert_ranked(answer, LABELS)
    assert answer == classify(zsc_url, [TEXT], LABELS, template=TEMPLATE)[0]
    assert answer != classify(zsc_url, [TEXT], LABELS)[0]  # the template reached the engine


def test_client_comma_separated_labels(zsc_url: str) -> None:
    # Type hints are not enforced: the client sends the string as is, as the pipeline takes it.
    answer = scored(client(zsc_url).zero_shot_classification(TEXT, ", ".join(LABELS)))
    assert_ranked(answer, LABELS)
    assert answer == classify(zsc_url, [TEXT], LABELS)[0]


def test_client_several_inputs(zsc_url: str) -> None:
    # The client passes a list of texts through and parses the list of lists back.
    answers = client(zsc_url).zero_shot_classification(TEXTS, LABELS, multi_label=True)
    assert len(answers) == len(TEXTS)
    got = [scored(per_text) for per_text in answers]
    for answer in got:
        assert_ranked(answer, LABELS)
    assert got == classify(zsc_url, TEXTS, LABELS, multi_label=True)


def test_client_on_the_predict_route(zsc_url: str) -> None:
    answer = scored(
        InferenceClient(model=f"{zsc_url}/predict", timeout=60).zero_shot_classification(
            TEXT, LABELS
        )
    )
    assert answer == classify(zsc_url, [TEXT], LABELS)[0]


def test_client_with_api_keys_on(keys_url: str) -> None:
    answer = scored(client(keys_url, token=KEY).zero_shot_classification(TEXT, LABELS))
    assert_ranked(answer, LABELS)
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert answer == classify(keys_url, [TEXT], LABELS, headers=bearer)[0]

    # A wrong key; none at all (no token given, and the fixture left none cached to send).
    for token in (WRONG_KEY, None):
        with pytest.raises(HfHubHTTPError) as info:
            client(keys_url, token=token).zero_shot_classification(TEXT, LABELS)
        assert info.value.response.status_code == 401
        assert info.value.response.json()["error"]["type"] == "unauthorized"
        assert info.value.response.headers["www-authenticate"].startswith('Bearer realm="zsc"')


def test_client_surfaces_a_429(limited_url: str) -> None:
    # Drain the bucket through /v1/classify, a pair at a time, to under one pair: the HF route
    # pays from the same bucket, and its 9 pairs are 8 s of refill away.
    wait_for(
        lambda: classify_status(limited_url, ["a"]) == 429, 60, "the bucket to drain", every_s=0
    )
    with pytest.raises(HfHubHTTPError) as info:
        client(limited_url).zero_shot_classification(TEXT, COSTLY)
    response = info.value.response
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-policy"] == f'"default";q={BURST};w={BURST // RATE}'
    assert response.json()["error"]["type"] == "rate_limited"


# ---- plain HTTP: the payloads of the inference toolkit and Inference Endpoints ---------------


@pytest.mark.parametrize(
    ("path", "parameters", "multi_label", "template"),
    [
        ("/", {"candidateLabels": LABELS}, False, None),
        ("/", {"candidate_labels": "sports, cooking, politics"}, False, None),
        ("/", {"candidateLabels": "sports,cooking , politics"}, False, None),
        (
            "/",
            {"candidateLabels": LABELS, "multiLabel": True, "hypothesisTemplate": TEMPLATE},
            True,
            TEMPLATE,
        ),
        (
            "/",
            {"candidate_labels": LABELS, "multi_label": None, "hypothesis_template": None},
            False,
            None,
        ),
        ("/predict", {"candidate_labels": LABELS, "multi_label": True}, True, None),
        ("/predict", {"candidateLabels": LABELS, "hypothesis_template": TEMPLATE}, False, TEMPLATE),
    ],
    ids=[
        "candidateLabels",
        "label-string",
        "candidateLabels-string",
        "camelCase",
        "nulls-are-defaults",
        "predict",
        "predict-candidateLabels",
    ],
)
def test_toolkit_payloads(
    zsc_url: str, path: str, parameters: dict[str, Any], multi_label: bool, template: str | None
) -> None:
    response = hf_post(zsc_url, {"inputs": TEXT, "parameters": parameters}, path)
    assert response.status_code == 200, response.text
    expected = classify(zsc_url, [TEXT], LABELS, multi_label=multi_label, template=template)[0]
    assert scored(response.json()) == expected


def test_several_inputs_and_request_options(zsc_url: str) -> None:
    body = {
        "inputs": TEXTS,
        "parameters": {"candidate_labels": LABELS},
        "options": {"wait_for_model": True, "use_cache": False},  # the older API's: accepted
    }
    response = hf_post(zsc_url, body)
    assert response.status_code == 200, response.text
    assert [scored(per_text) for per_text in response.json()] == classify(zsc_url, TEXTS, LABELS)
    one = hf_post(zsc_url, {"inputs": [TEXT], "parameters": {"candidate_labels": LABELS}})
    assert [scored(per_text) for per_text in one.json()] == classify(zsc_url, [TEXT], LABELS)


def test_the_random_model_warning_is_a_header(zsc_url: str) -> None:
    response = hf_post(zsc_url, {"inputs": TEXT, "parameters": {"candidate_labels": LABELS}})
    assert response.status_code == 200
    assert response.headers["x-zsc-warning"] == RANDOM_MODEL_WARNING
    own = httpx.post(f"{zsc_url}/v1/classify", json={"text": TEXT, "labels": LABELS}, timeout=60)
    assert own.json()["warning"] == RANDOM_MODEL_WARNING  # the same model, the same warning


# (Hugging Face body, the equivalent /v1/classify body): both must fail the same way.
P = {"candidate_labels": LABELS}
MALFORMED: dict[str, tuple[Any, Any]] = {
    "no-inputs": ({"parameters": P}, {"labels": LABELS}),
    "no-parameters": ({"inputs": TEXT}, {"text": TEXT}),
    "no-labels": ({"inputs": TEXT, "parameters": {"multi_label": True}}, {"text": TEXT}),
    "empty-label-list": (
        {"inputs": TEXT, "parameters": {"candidate_labels": []}},
        {"text": TEXT, "labels": []},
    ),
    "empty-label-string": (
        {"inputs": TEXT, "parameters": {"candidate_labels": " , "}},
        {"text": TEXT, "labels": " , "},
    ),
    "a-blank-label": (
        {"inputs": TEXT, "parameters": {"candidate_labels": ["a", " "]}},
        {"text": TEXT, "labels": ["a", " "]},
    ),
    "no-texts": ({"inputs": [], "parameters": P}, {"texts": [], "labels": LABELS}),
    "a-blank-text": ({"inputs": "  ", "parameters": P}, {"text": "  ", "labels": LABELS}),
    "template-without-slot": (
        {"inputs": TEXT, "parameters": {**P, "hypothesis_template": "No slot."}},
        {"text": TEXT, "labels": LABELS, "hypothesis_template": "No slot."},
    ),
    "template-two-slots": (
        {"inputs": TEXT, "parameters": {**P, "hypothesis_template": "{} or {}"}},
        {"text": TEXT, "labels": LABELS, "hypothesis_template": "{} or {}"},
    ),
    "template-bad-braces": (
        {"inputs": TEXT, "parameters": {**P, "hypothesis_template": "{x} is {}"}},
        {"text": TEXT, "labels": LABELS, "hypothesis_template": "{x} is {}"},
    ),
    "inputs-a-number": ({"inputs": 5, "parameters": P}, {"text": 5, "labels": LABELS}),
    "inputs-with-a-number": (
        {"inputs": [TEXT, 5], "parameters": P},
        {"texts": [TEXT, 5], "labels": LABELS},
    ),
    "labels-a-number": (
        {"inputs": TEXT, "parameters": {"candidate_labels": 5}},
        {"text": TEXT, "labels": 5},
    ),
    "labels-with-a-number": (
        {"inputs": TEXT, "parameters": {"candidate_labels": ["a", 5]}},
        {"text": TEXT, "labels": ["a", 5]},
    ),
    "multi-label-a-string": (
        {"inputs": TEXT, "parameters": {**P, "multi_label": "yes"}},
        {"text": TEXT, "labels": LABELS, "multi_label": "yes"},
    ),
    "template-a-number": (
        {"inputs": TEXT, "parameters": {**P, "hypothesis_template": 5}},
        {"text": TEXT, "labels": LABELS, "hypothesis_template": 5},
    ),
    "parameters-a-string": (
        {"inputs": TEXT, "parameters": "sports"},
        {"text": TEXT, "labels": {"a": 1}},
    ),
    "top-k-a-string": (
        {"inputs": TEXT, "parameters": {**P, "prefilter_top_k": "3"}},
        {"text": TEXT, "labels": LABELS, "prefilter_top_k": "3"},
    ),
    "top-k-without-prefilter": (
        {"inputs": TEXT, "parameters": {**P, "prefilter_top_k": 2}},
        {"text": TEXT, "labels": LABELS, "prefilter_top_k": 2},
    ),
    "too-many-labels": (
        {"inputs": TEXT, "parameters": {"candidate_labels": labels_named(LIMITS.max_labels + 1)}},
        {"text": TEXT, "labels": labels_named(LIMITS.max_labels + 1)},
    ),
    "too-many-texts": (
        {"inputs": [TEXT] * (LIMITS.max_texts + 1), "parameters": {"candidate_labels": ["a"]}},
        {"texts": [TEXT] * (LIMITS.max_texts + 1), "labels": ["a"]},
    ),
    "too-many-pairs": (
        {"inputs": [TEXT] * 100, "parameters": {"candidate_labels": labels_named(50)}},
        {"texts": [TEXT] * 100, "labels": labels_named(50)},
    ),
    "text-too-long": (
        {"inputs": "x" * (LIMITS.max_text_chars + 1), "parameters": P},
        {"text": "x" * (LIMITS.max_text_chars + 1), "labels": LABELS},
    ),
    "label-too-long": (
        {"inputs": TEXT, "parameters": {"candidate_labels": ["x" * (LIMITS.max_label_chars + 1)]}},
        {"text": TEXT, "labels": ["x" * (LIMITS.max_label_chars + 1)]},
    ),
    "unknown-field": (
        {"inputs": TEXT, "parameters": P, "model": "x"},
        {"text": TEXT, "labels": LABELS, "model": "x"},
    ),
    "unknown-parameter": (
        {"inputs": TEXT, "parameters": {**P, "top_k": 2}},
        {"text": TEXT, "labels": LABELS, "top_k": 2},
    ),
    "body-a-list": ([TEXT], [TEXT]),
    "body-a-string": (TEXT, TEXT),
}
# too-many-pairs breaks max_pairs alone: its texts and its labels are each within their limits.
assert LIMITS.max_pairs < 100 * 50 and LIMITS.max_texts >= 100 and LIMITS.max_labels >= 50


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_payloads_fail_like_v1_classify(zsc_url: str, case: str) -> None:
    hf_body, own_body = MALFORMED[case]
    own = httpx.post(f"{zsc_url}/v1/classify", json=own_body, timeout=60)
    for path in ("/", "/predict"):
        response = hf_post(zsc_url, hf_body, path)
        assert 400 <= response.status_code < 500, response.text
        assert response.status_code == own.status_code, (response.text, own.text)
        error = response.json()["error"]
        assert error["type"] == own.json()["error"]["type"]
        assert isinstance(error["message"], str) and error["message"]


def test_both_spellings_of_a_parameter_are_refused_by_name(zsc_url: str) -> None:
    body = {"inputs": TEXT, "parameters": {"candidate_labels": LABELS, "candidateLabels": ["x"]}}
    response = hf_post(zsc_url, body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert "candidate_labels or candidateLabels" in response.json()["error"]["message"]


def test_invalid_json_is_400(zsc_url: str) -> None:
    for path in ("/", "/predict"):
        response = httpx.post(
            zsc_url + path,
            content=b'{"inputs": "t", ',
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_json"


# ---- the shared rate limit -------------------------------------------------------------------


def test_the_hf_route_pays_from_the_shared_bucket(limited_url: str) -> None:
    one_pair = {"inputs": TEXT, "parameters": {"candidate_labels": ["a"]}}

    def answered(status: int) -> httpx.Response | None:
        response = hf_post(limited_url, one_pair)
        return response if response.status_code == status else None

    ok = wait_for(lambda: answered(200), 60, "a pair's worth of tokens")
    assert ok.headers["ratelimit-policy"] == f'"default";q={BURST};w={BURST // RATE}'
    assert ok.headers["ratelimit"].startswith('"default";r=')
    # Drain the bucket a pair at a time through the HF route alone, to under one pair.
    refused = wait_for(lambda: answered(429), 60, "the HF route to drain the bucket", every_s=0)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limited"
    # Paid through the HF route, so /v1/classify finds the same bucket empty (9 pairs: 8 s away).
    assert classify_status(limited_url, COSTLY) == 429


def test_a_request_over_the_burst_is_a_limit_error_not_a_429(limited_url: str) -> None:
    body = {"inputs": TEXT, "parameters": {"candidate_labels": labels_named(BURST + 1)}}
    response = hf_post(limited_url, body)
    own = httpx.post(
        f"{limited_url}/v1/classify",
        json={"text": TEXT, "labels": labels_named(BURST + 1)},
        timeout=60,
    )
    assert own.status_code in (413, 422)
    assert (response.status_code, response.json()["error"]["type"]) == (
        own.status_code,
        own.json()["error"]["type"],
    )


# ---- keys, the page, the OpenAPI document ----------------------------------------------------


def test_hf_routes_need_a_key_and_the_page_stays_open(keys_url: str) -> None:
    body = {"inputs": TEXT, "parameters": {"candidate_labels": LABELS}}
    for path in ("/", "/predict"):
        assert hf_post(keys_url, body, path).status_code == 401
        wrong = hf_post(keys_url, body, path, headers={"Authorization": f"Bearer {WRONG_KEY}"})
        assert wrong.status_code == 401 and WRONG_KEY not in wrong.text
        right = hf_post(keys_url, body, path, headers={"Authorization": f"Bearer {KEY}"})
        assert right.status_code == 200, right.text
    page = httpx.get(f"{keys_url}/", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    spec = httpx.get(f"{keys_url}/openapi.json", timeout=60).json()
    for path in ("/", "/predict"):
        assert spec["paths"][path]["post"]["security"] == [{SCHEME_NAME: []}]
        assert "401" in spec["paths"][path]["post"]["responses"]


def test_get_root_is_still_the_page(zsc_url: str) -> None:
    page = httpx.get(f"{zsc_url}/", timeout=60)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    posted = hf_post(zsc_url, {"inputs": TEXT, "parameters": {"candidate_labels": LABELS}})
    assert posted.headers["content-type"] == "application/json"


def test_openapi_documents_both_routes(zsc_url: str) -> None:
    spec = httpx.get(f"{zsc_url}/openapi.json", timeout=60).json()
    schemas = spec["components"]["schemas"]
    operation_ids = set()
    for path in ("/", "/predict"):
        assert set(spec["paths"][path]) == {"post"}  # GET / (the page) is not an API operation
        operation = spec["paths"][path]["post"]
        operation_ids.add(operation["operationId"])
        request = operation["requestBody"]["content"]["application/json"]["schema"]
        assert request == {"$ref": "#/components/schemas/HFRequest"}
        ok = operation["responses"]["200"]
        assert "X-Zsc-Warning" in ok["headers"]
        shapes = ok["content"]["application/json"]["schema"]["anyOf"]
        label_score = {"$ref": "#/components/schemas/LabelScore"}
        assert {"type": "array", "items": label_score} in shapes
        assert {"type": "array", "items": {"type": "array", "items": label_score}} in shapes
    assert len(operation_ids) == 2
    assert set(schemas["LabelScore"]["properties"]) == {"label", "score"}
    assert {"inputs", "parameters"} <= set(schemas["HFRequest"]["required"])
    assert "candidate_labels" in schemas["HFParameters"]["properties"]


# ---- the Hugging Face token the client sends by itself ---------------------------------------


def assert_not_echoed(response: httpx.Response, secret: str) -> None:
    assert secret not in response.text
    assert not any(secret in value for value in response.headers.values())


def test_a_cached_hf_token_is_never_echoed(
    zsc_url: str, keys_url: str, cached_hf_token: str
) -> None:
    marker = "zsc-hf-" + secrets.token_hex(8)
    # Keys off: the token is ignored and the answer is the usual one.
    answer = client(zsc_url, headers={"X-Request-ID": f"{marker}-open"}).zero_shot_classification(
        TEXT, LABELS
    )
    assert scored(answer) == classify(zsc_url, [TEXT], LABELS)[0]
    # Keys on: the cached token is a wrong key, refused by zsc itself without repeating it.
    with pytest.raises(HfHubHTTPError) as info:
        client(keys_url, headers={"X-Request-ID": f"{marker}-keys"}).zero_shot_classification(
            TEXT, LABELS
        )
    assert info.value.response.status_code == 401
    assert_not_echoed(info.value.response, cached_hf_token)
    assert cached_hf_token not in str(info.value)
    # The same header over plain HTTP, on an answer and on every kind of error.
    auth = {"Authorization": f"Bearer {cached_hf_token}"}
    for url, body in (
        (zsc_url, {"inputs": TEXT, "parameters": {"candidate_labels": LABELS}}),
        (zsc_url, {"inputs": TEXT, "parameters": {}}),
        (zsc_url, {"inputs": TEXT, "parameters": {"candidate_labels": labels_named(100)}}),
        (keys_url, {"inputs": TEXT, "parameters": {"candidate_labels": LABELS}}),
    ):
        for path in ("/", "/predict"):
            assert_not_echoed(hf_post(url, body, path, headers=auth), cached_hf_token)
