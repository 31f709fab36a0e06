"""The service over real HTTP and through the DeploymentHandle, on the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live import app_running, replica_names, wait_for
from parity import CASES, Case, as_list, assert_same_results
from ray import serve
from ray.serve.handle import DeploymentHandle
from transformers import AutoTokenizer, pipeline

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_http_equals_the_pipeline(zsc_url: str, reference, case: Case) -> None:
    response = httpx.post(f"{zsc_url}/v1/classify", json=case.body(), timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_same_results(body["results"], as_list(reference(case.texts, **case.pipeline_kwargs())))
    n_labels = len(body["results"][0]["labels"])
    assert body["usage"] == {"pairs": len(case.texts) * n_labels}
    assert "random" in body["warning"]
    assert body["truncated"] == ([0] if case.name == "longer_than_window" else [])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_handle_equals_http(zsc_url: str, zsc_handle, case: Case) -> None:
    via_http = httpx.post(f"{zsc_url}/v1/classify", json=case.body(), timeout=60).json()
    via_handle = zsc_handle.classify.remote(
        case.texts, case.labels, hypothesis_template=case.template, multi_label=case.multi_label
    ).result(timeout_s=60)
    assert via_handle["results"] == via_http["results"]
    assert via_handle["usage"] == via_http["usage"]


# ---- batching: requests share batches, and a redeploy with a new user_config retunes them ----

RETUNE_APP = "retune"
RETUNE_TEXTS = [f"Request {i}: the museum opens a new exhibition." for i in range(10)]
RETUNE_LABELS = ["art", "sports", "finance"]
LARGE = {"max_batch_tokens": 8192, "batch_wait_timeout_s": 0.05}
# Below one full-window pair: the Classifier raises it to its window (64 tokens here).
SMALL = {"max_batch_tokens": 16, "batch_wait_timeout_s": 0.05}


@pytest.fixture(scope="module")
def retune_app(
    serve_instance: str, tiny_model_dir: Path, apply_serve_config
) -> Iterator[tuple[str, Callable[[dict], None]]]:
    """An app deployed from a config, as `serve deploy` (through the dashboard) and `serve run
    CONFIG` both do: the controller gets the whole config. `deploy(user_config)` redeploys the
    same config with another `user_config` for the Classifier, as an operator edits
    `deploy_config.yaml`. (`serve.run` of a built app is no such update: Serve gives its code a
    new version on every call and replaces every replica.) Deployed with the LARGE budget."""
    app = {
        "name": RETUNE_APP,
        "route_prefix": f"/{RETUNE_APP}",
        "import_path": "serve_app.app:build_app",
        "args": {
            "model": str(tiny_model_dir),
            "classifier": {"num_cpus": 0.5},
            "ingress": {"num_cpus": 0.1},
            "jobs": {"enabled": False},
        },
    }

    def deploy(user_config: dict) -> None:
        config = {**app, "deployments": [{"name": "Classifier", "user_config": user_config}]}
        # What both CLIs hand the controller; it applies a config, never a built app.
        apply_serve_config(RETUNE_APP, config)

    # A wait close to one tiny-model forward lets concurrent requests meet in a batch.
    deploy(LARGE)
    wait_for(lambda: app_running(RETUNE_APP), 180, "the app to run")
    yield f"{serve_instance}/{RETUNE_APP}", deploy
    apply_serve_config(RETUNE_APP, None)


async def test_concurrent_requests_share_batches(retune_app, reference) -> None:
    """On the app deployed from a config (above), at its LARGE budget."""
    url, _ = retune_app
    classifier = serve.get_deployment_handle("Classifier", app_name=RETUNE_APP)
    await classifier.reset_batch_stats.remote()
    texts = [f"Request {i}: the museum opens a new exhibition." for i in range(32)]
    labels = ["art", "sports", "finance"]
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(
            *(client.post(f"{url}/v1/classify", json={"text": t, "labels": labels}) for t in texts)
        )
    assert all(a.status_code == 200 for a in answers)
    for text, answer in zip(texts, answers):
        assert_same_results(answer.json()["results"], [reference(text, candidate_labels=labels)])
    stats = await classifier.batch_stats.remote()
    assert stats["mean_calls_per_batch"] > 1.0, stats
    assert stats["mean_pairs_per_batch"] > len(labels), stats


def pair_tokens(model_dir: Path, text: str, label: str) -> int:
    """Tokens of one (text, hypothesis) pair, as the pipeline's tokenizer counts them."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return len(tokenizer(text, f"This example is {label}.")["input_ids"])


def test_a_redeploy_with_new_user_config_retunes_the_running_replica(
    retune_app: tuple[str, Callable[[dict], None]], tiny_model_dir: Path
) -> None:
    url, deploy = retune_app

    def running_with(max_batch_tokens: int) -> dict | None:
        if not app_running(RETUNE_APP):
            return None
        info = classifier().model_info.remote().result(timeout_s=60)
        return info if info["batching"]["max_batch_tokens"] == max_batch_tokens else None

    def classifier() -> DeploymentHandle:  # once the app exists
        return serve.get_deployment_handle("Classifier", app_name=RETUNE_APP)

    async def four_at_once() -> list[httpx.Response]:
        body = {"texts": RETUNE_TEXTS, "labels": RETUNE_LABELS}
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/v1/classify", json=body) for _ in range(4))
            )

    def batches_under_load() -> dict:
        """Four concurrent requests of 30 pairs each; the Classifier's batches meanwhile."""
        classifier().reset_batch_stats.remote().result(timeout_s=60)
        answers = asyncio.run(four_at_once())
        assert [a.status_code for a in answers] == [200] * 4, answers[0].text
        return classifier().batch_stats.remote().result(timeout_s=60)

    deploy(LARGE)
    first = wait_for(lambda: running_with(LARGE["max_batch_tokens"]), 180, "the app to run")
    replica, actors = first["replica"], replica_names(RETUNE_APP, "Classifier")
    window = first["max_length"]
    # The most pairs a batch can hold within one window's worth of tokens.
    shortest = min(
        pair_tokens(tiny_model_dir, text, label) for text in RETUNE_TEXTS for label in RETUNE_LABELS
    )
    cap = window // shortest
    large = batches_under_load()
    assert large["max_batch_tokens"] == LARGE["max_batch_tokens"], large
    assert large["max_pairs_per_batch"] > cap, large

    # The operator's redeploy: only user_config changed, so Serve reconfigures in place.
    deploy(SMALL)
    small_info = wait_for(lambda: running_with(window), 120, "the new budget to apply")
    # The budget never drops below one full-window pair (the Classifier raises it to that).
    assert small_info["batching"] == {**SMALL, "max_batch_tokens": window}
    small = batches_under_load()
    assert small["replica"] == replica and replica_names(RETUNE_APP, "Classifier") == actors
    assert small["max_batch_tokens"] == window, small
    assert small["max_pairs_per_batch"] <= cap, small
    assert small["batches"] >= 4 * len(RETUNE_TEXTS) * len(RETUNE_LABELS) / cap, small

    # And back: the same replica's batches grow again.
    deploy(LARGE)
    wait_for(lambda: running_with(LARGE["max_batch_tokens"]), 120, "the large budget to apply")
    again = batches_under_load()
    assert again["replica"] == replica and replica_names(RETUNE_APP, "Classifier") == actors
    assert again["max_pairs_per_batch"] > cap, again
