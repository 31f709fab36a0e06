"""Python futures with callbacks over the app handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import httpx
import pytest

from serve_app.client import submit, submit_async, submit_many

pytestmark = pytest.mark.ray

LABELS = ["sports", "finance", "travel"]


def test_a_hundred_callbacks_all_fire_with_correct_results(zsc_url: str, zsc_handle) -> None:
    texts = [f"Message {i}: the match went to penalties and the bank raised rates." for i in range(100)]
    seen: dict[str, dict] = {}
    lock = threading.Lock()

    def on_done(future: concurrent.futures.Future) -> None:
        result = future.result()["results"][0]
        with lock:
            seen[result["sequence"]] = result

    futures = submit_many(zsc_handle, texts, LABELS, callback=on_done)
    done, not_done = concurrent.futures.wait(futures, timeout=120)
    assert not not_done
    # Callbacks run after the future resolves; give the last ones a moment to land.
    for _ in range(100):
        if len(seen) == len(texts):
            break
        threading.Event().wait(0.05)
    assert set(seen) == set(texts)
    expected = httpx.post(f"{zsc_url}/v1/classify", json={"texts": texts[:5], "labels": LABELS}, timeout=60).json()
    for want in expected["results"]:
        got = seen[want["sequence"]]
        assert got["labels"] == want["labels"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_an_exception_reaches_the_callback_as_an_exception(zsc_handle) -> None:
    outcome: list[BaseException | None] = []
    arrived = threading.Event()

    def on_done(future: concurrent.futures.Future) -> None:
        outcome.append(future.exception())
        arrived.set()

    future = submit(zsc_handle, ["some text"], [], callback=on_done)
    assert arrived.wait(60)
    assert outcome[0] is not None and "labels is empty" in str(outcome[0])
    with pytest.raises(Exception, match="labels is empty"):
        future.result()


def test_the_asyncio_variant_settles_on_the_loop(zsc_handle) -> None:
    async def run() -> tuple[dict, bool]:
        loop = asyncio.get_running_loop()
        on_loop = []
        future = await submit_async(
            zsc_handle, ["rain tomorrow"], LABELS,
            callback=lambda f: on_loop.append(asyncio.get_running_loop() is loop),
        )
        answer = await asyncio.wait_for(future, 60)
        await asyncio.sleep(0)
        return answer, all(on_loop) and len(on_loop) == 1

    answer, callback_on_loop = asyncio.run(run())
    assert answer["results"][0]["sequence"] == "rain tomorrow"
    assert callback_on_loop
