"""Python futures with callbacks over the `zsc` app handle (serve_app.client.futures)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import httpx
import pytest
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.client.futures import submit, submit_async, submit_many
from serve_app.core.errors import ClientError

pytestmark = pytest.mark.ray

LABELS = ["sports", "finance", "travel"]
# Varied lengths, so the 100 requests do not all look alike to the batcher.
PHRASES = ["the match went to penalties", "the bank raised rates", "our flight was late"]
TEXTS = [f"Note {i}: " + " ".join(PHRASES[: 1 + i % 3]) * (1 + i % 4) for i in range(100)]


def assert_same_result(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same sequence, labels and scores. Batching may move scores in the last float digits, so
    scores compare approximately, and labels by score (a near-tie may legitimately swap)."""
    assert got["sequence"] == want["sequence"]
    assert sorted(got["labels"]) == sorted(want["labels"])
    assert dict(zip(got["labels"], got["scores"])) == pytest.approx(
        dict(zip(want["labels"], want["scores"])), abs=1e-5
    )
    assert got["scores"] == sorted(got["scores"], reverse=True)


@pytest.fixture(scope="module")
def http_reference(zsc_url: str) -> dict[str, dict[str, Any]]:
    """What `POST /v1/classify` answers for TEXTS, keyed by text."""
    body = {"texts": TEXTS, "labels": LABELS}
    response = httpx.post(f"{zsc_url}/v1/classify", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return {result["sequence"]: result for result in response.json()["results"]}


def test_a_hundred_callbacks_all_fire_with_the_http_results(zsc_handle, http_reference) -> None:
    seen: dict[str, dict[str, Any]] = {}
    threads: set[int] = set()
    lock = threading.Lock()
    all_fired = threading.Event()

    def on_done(future: concurrent.futures.Future) -> None:
        body = future.result()
        with lock:
            seen[body["results"][0]["sequence"]] = body
            threads.add(threading.get_ident())
            if len(seen) == len(TEXTS):
                all_fired.set()

    futures = submit_many(zsc_handle, TEXTS, LABELS, callback=on_done)
    assert len(futures) == len(TEXTS)
    for future in concurrent.futures.as_completed(futures, timeout=120):
        future.result()  # raises if that request failed
    # A future is done before its callbacks have all run; wait for the last callback to land.
    assert all_fired.wait(30), f"{len(TEXTS) - len(seen)} callbacks never fired"
    assert set(seen) == set(TEXTS)
    # Futures come back in the order of the texts, whatever order they finished in.
    assert [future.result()["results"][0]["sequence"] for future in futures] == TEXTS
    for text, body in seen.items():
        assert body["usage"] == {"pairs": len(LABELS)}
        assert_same_result(body["results"][0], http_reference[text])
    # Callbacks run on Ray's thread, not the caller's (the documented contract).
    assert threading.get_ident() not in threads


def test_an_exception_reaches_the_callback_as_an_exception(zsc_handle) -> None:
    outcome: list[BaseException | None] = []
    arrived = threading.Event()

    def on_done(future: concurrent.futures.Future) -> None:
        outcome.append(future.exception())
        arrived.set()

    future = submit(zsc_handle, ["some text"], [], callback=on_done)
    assert arrived.wait(60)
    error = outcome[0]
    assert isinstance(error, ClientError), repr(error)
    assert error.status_code == 422 and "labels" in error.message
    with pytest.raises(ClientError):
        future.result()


def test_a_by_value_handle_is_switched_to_by_reference(zsc_handle) -> None:
    """Under RAY_SERVE_THROUGHPUT_OPTIMIZED=1 handles are by-value, which `_to_object_ref`
    refuses; `submit` must cope with such a handle."""
    by_value = zsc_handle.options(_by_reference=False)
    body = submit(by_value, ["rain tomorrow"], LABELS).result(timeout=60)
    assert body["results"][0]["sequence"] == "rain tomorrow"


async def test_the_asyncio_variant_settles_on_the_loop(zsc_handle, http_reference) -> None:
    loop = asyncio.get_running_loop()
    callback_on_loop: list[bool] = []
    futures = [
        submit_async(
            zsc_handle,
            [text],
            LABELS,
            callback=lambda _: callback_on_loop.append(asyncio.get_running_loop() is loop),
        )
        for text in TEXTS[:10]
    ]
    assert all(isinstance(future, asyncio.Future) for future in futures)
    bodies = await asyncio.wait_for(asyncio.gather(*futures), 60)
    for text, body in zip(TEXTS[:10], bodies):
        assert_same_result(body["results"][0], http_reference[text])
    await asyncio.sleep(0)  # done-callbacks are scheduled one loop step after the result
    assert callback_on_loop == [True] * 10

    with pytest.raises(ClientError):
        await asyncio.wait_for(submit_async(zsc_handle, ["x"], []), 60)


async def test_submit_works_inside_a_running_loop(zsc_handle, http_reference) -> None:
    """Ray forbids the blocking `_to_object_ref_sync` on a running loop; `submit` avoids it."""
    text = TEXTS[7]
    future = submit(zsc_handle, [text], LABELS)
    assert isinstance(future, concurrent.futures.Future)
    body = await asyncio.wait_for(asyncio.wrap_future(future), 60)
    assert_same_result(body["results"][0], http_reference[text])
    failed = submit(zsc_handle, [text], [])
    with pytest.raises(ClientError):
        await asyncio.wait_for(asyncio.wrap_future(failed), 60)


WAITING_APP = "futures-wait"
BATCH_WAIT_S = 3.0


@pytest.fixture(scope="module")
def waiting_app(deploy_app) -> tuple[DeploymentHandle, DeploymentHandle]:
    """An app whose Classifier holds every batch open for 3 s under a token
    budget no request here fills: a request's pairs sit queued in the replica for 3 s
    before the model runs them, long enough for a cancel to reach them there."""
    deploy_app(
        WAITING_APP,
        batching={"max_batch_tokens": 65536, "batch_wait_timeout_s": BATCH_WAIT_S},
    )
    return (
        serve.get_app_handle(WAITING_APP),
        serve.get_deployment_handle("Classifier", app_name=WAITING_APP),
    )


async def test_cancelling_the_asyncio_future_cancels_the_request(waiting_app) -> None:
    app, classifier = waiting_app
    await classifier.reset_batch_stats.remote()
    texts = [f"Cancelled {i}: the match went to penalties." for i in range(50)]
    future = submit_async(app, texts, LABELS)
    await asyncio.sleep(1.0)  # the request reaches the Classifier; its 150 pairs wait there
    assert not future.done()
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    # The batch they were queued in has closed since (3 s after they came): had the cancel not
    # reached the replica, the model would have run them by now. Serve drops cancelled pairs.
    await asyncio.sleep(BATCH_WAIT_S + 2)
    stats = await classifier.batch_stats.remote()
    assert stats["batches"] == 0, f"the cancelled request's pairs were run: {stats}"

    # The handle stays usable, and the model runs exactly the next request's pairs.
    body = await asyncio.wait_for(submit_async(app, ["after a cancel"], LABELS), 60)
    assert body["results"][0]["sequence"] == "after a cancel"
    stats = await classifier.batch_stats.remote()
    assert (stats["batches"], stats["max_pairs_per_batch"]) == (1, len(LABELS)), stats
