"""The HTTP client and the batch runner against a scripted HTTP server on a real socket: no Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scripted_http import DROP, Reply, Seen, scripted_server

from serve_app.client import http as http_client
from serve_app.client.batch import BatchError, BatchSettings, Row, done_rows, run_batch
from serve_app.client.http import AsyncZeroShotClient, RetryPolicy, ZeroShotClient, ZscHTTPError

NO_JITTER = RetryPolicy(max_retries=3, jitter=0.0)
# What Ray Serve's proxy answers for a request inside an ingress replica that died.
PROXY_500 = Reply(500, text="ray.exceptions.ActorDiedError: The actor died unexpectedly")


def answer(texts: list[str]) -> dict[str, Any]:
    return {
        "model": "m",
        "results": [{"sequence": t, "labels": ["a", "b"], "scores": [0.75, 0.25]} for t in texts],
        "usage": {"pairs": 2 * len(texts)},
        "truncated": [],
    }


def ok(request: Seen) -> Reply:
    body = request.json()
    return Reply(200, answer(body.get("texts") or [body["text"]]))


def limited(status: int, retry_after: str | None, message: str = "slow down") -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status, {"error": {"type": "rate_limited", "message": message}}, headers=headers)


def in_turn(*replies: Any, then: Any = ok) -> Any:
    """A script that gives `replies` in order, then answers every request with `then`."""
    queue = list(replies)
    return lambda request: queue.pop(0) if queue else then(request)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(http_client.time, "sleep", waited.append)
    return waited


def test_429_and_503_are_resent_after_retry_after(sleeps: list[float]) -> None:
    script = in_turn(limited(429, "2"), limited(503, "1"))
    with (
        scripted_server(script) as (url, seen),
        ZeroShotClient(f"{url}/zsc2", api_key="k1", retry=NO_JITTER) as client,
    ):
        body = client.classify(["x"], ["a", "b"], multi_label=True)
    assert body["results"][0]["labels"] == ["a", "b"]
    assert sleeps == [2.0, 1.0]
    assert [r.path for r in seen] == ["/zsc2/v1/classify"] * 3
    assert seen[0].headers["authorization"] == "Bearer k1"
    assert seen[0].json() == {
        "texts": ["x"],
        "labels": ["a", "b"],
        "hypothesis_template": "This example is {}.",
        "multi_label": True,
    }


def test_a_request_lost_in_a_dying_replica_is_resent(sleeps: list[float]) -> None:
    # Connection closed with no answer, Serve's plain-text 500, a gateway's 502: none completed.
    script = in_turn(DROP, PROXY_500, Reply(502, text="<html>bad gateway</html>"))
    with scripted_server(script) as (url, seen), ZeroShotClient(url, retry=NO_JITTER) as client:
        assert client.classify("x", "a,b")["results"][0]["sequence"] == "x"
    assert len(seen) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # backoff_s doubled per attempt (no Retry-After)


def test_retries_are_bounded_and_the_error_is_typed(sleeps: list[float]) -> None:
    with scripted_server(lambda r: limited(429, "1")) as (url, seen):
        with ZeroShotClient(url, retry=NO_JITTER) as client, pytest.raises(ZscHTTPError) as caught:
            client.classify("x", "a,b")
    assert len(seen) == 4 and len(sleeps) == 3
    assert (caught.value.status, caught.value.type, caught.value.retry_after) == (
        429,
        "rate_limited",
        1.0,
    )


def test_zsc_own_500_is_final(sleeps: list[float]) -> None:
    bug = Reply(500, {"error": {"type": "internal_error", "message": "the server failed"}})
    with scripted_server(lambda r: bug) as (url, seen), ZeroShotClient(url) as client:
        with pytest.raises(ZscHTTPError) as caught:
            client.classify("x", "a")
    assert (caught.value.status, caught.value.type) == (500, "internal_error")
    assert len(seen) == 1 and sleeps == []


def test_a_wait_longer_than_allowed_is_not_slept(sleeps: list[float]) -> None:
    with (
        scripted_server(lambda r: limited(429, "3600")) as (url, _),
        ZeroShotClient(url, retry=NO_JITTER) as client,
    ):
        with pytest.raises(ZscHTTPError, match="retry after 3600"):
            client.classify("x", "a")
    assert sleeps == []


def test_errors_carry_status_type_and_message() -> None:
    def script(request: Seen) -> Reply:
        if request.path == "/v1/classify":
            return Reply(422, {"error": {"type": "invalid_request", "message": "labels is empty"}})
        return Reply(404, text="<html>not here</html>")

    with scripted_server(script) as (url, _), ZeroShotClient(url) as client:
        with pytest.raises(ZscHTTPError) as caught:
            client.classify("x", "")
        assert (caught.value.status, caught.value.type, caught.value.message) == (
            422,
            "invalid_request",
            "labels is empty",
        )
        with pytest.raises(ZscHTTPError) as caught:
            client.model_info()
        assert caught.value.status == 404 and "not here" in caught.value.message


def test_a_resent_job_submission_keeps_its_idempotency_key(sleeps: list[float]) -> None:
    script = in_turn(
        limited(503, "1"), DROP, then=lambda r: Reply(202, {"id": "j1", "state": "queued"})
    )
    with scripted_server(script) as (url, seen), ZeroShotClient(url, retry=NO_JITTER) as client:
        assert client.submit_job(["a"], "x,y", metadata={"k": 1})["id"] == "j1"
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1
    assert seen[0].json()["metadata"] == {"k": 1}


def test_wait_job_polls_then_joins_every_page(sleeps: list[float]) -> None:
    states = iter(["queued", "running", "succeeded"])
    pages = {1: [{"sequence": "a"}, {"sequence": "b"}], 2: [{"sequence": "c"}, None]}

    def script(request: Seen) -> Reply:
        assert request.params["page_size"] == "2"
        page = int(request.params["page"])
        state = next(states) if page == 1 else "succeeded"
        if state != "succeeded":
            return Reply(200, {"id": "j1", "state": state, "results": None})
        paging = {"page": page, "page_size": 2, "total_pages": 2, "has_more": page < 2}
        return Reply(
            200, {"id": "j1", "state": state, "results": pages[page], "results_page": paging}
        )

    with scripted_server(script) as (url, seen), ZeroShotClient(url) as client:
        job = client.wait_job("j1", poll_interval_s=0.01, page_size=2)
    assert job["state"] == "succeeded"
    assert job["results"] == [{"sequence": "a"}, {"sequence": "b"}, {"sequence": "c"}, None]
    assert len(sleeps) == 2
    assert [r.params["page"] for r in seen] == ["1", "1", "1", "2"]


async def test_async_client_rides_out_a_dropped_connection() -> None:
    fast = RetryPolicy(max_retries=2, backoff_s=0.01, jitter=0.0)
    with scripted_server(in_turn(DROP, PROXY_500)) as (url, seen):
        async with AsyncZeroShotClient(url, retry=fast) as client:
            body = await client.classify(["x", "y"], ["a", "b"])
    assert [r["sequence"] for r in body["results"]] == ["x", "y"]
    assert len(seen) == 3
    with scripted_server(lambda r: PROXY_500) as (url, seen):
        async with AsyncZeroShotClient(url, retry=fast) as client:
            with pytest.raises(ZscHTTPError) as caught:
                await client.classify("z", ["a"])
    assert caught.value.status == 500 and "ActorDiedError" in caught.value.message
    assert len(seen) == 3  # the first try and max_retries resends


async def test_batch_rides_out_a_429_and_isolates_a_bad_row(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def script(request: Seen) -> Reply:
        body = request.json()
        texts = body.get("texts") or [body["text"]]
        calls.append(texts)
        if len(calls) == 2:
            return limited(429, "0")
        if "too long" in texts:
            return Reply(413, {"error": {"type": "limit_exceeded", "message": "texts[0] too long"}})
        return Reply(200, answer(texts))

    rows = [Row(i, t) for i, t in enumerate(["one", "two", "too long", "four", "five"])]
    rows.append(Row(5, None, "r5", problem="no text"))
    out = tmp_path / "out.jsonl"
    with scripted_server(script) as (url, _):
        async with AsyncZeroShotClient(url) as client:
            summary = await run_batch(
                client, rows, out, BatchSettings("a,b", "It is {}.", False, 2, 1)
            )

    lines = {line["row"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert sorted(lines) == [0, 1, 2, 3, 4, 5]
    assert lines[2]["error"] == {"type": "limit_exceeded", "message": "texts[0] too long"}
    assert lines[5] == {
        "row": 5,
        "id": "r5",
        "error": {"type": "invalid_input", "message": "no text"},
    }
    assert lines[4]["result"]["sequence"] == "five"
    assert (summary.written, summary.errors) == (6, 2)
    assert calls[0] == ["zsc batch preflight"] and calls[1] == calls[2] == ["one", "two"]


def test_done_rows_cuts_only_a_half_written_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"row": 0}\n{"row": 2}\n{"row": 1, "res')
    assert done_rows(out) == {0, 2}
    assert out.read_bytes() == b'{"row": 0}\n{"row": 2}\n'
    out.write_bytes(b'{"row": 0}\ngarbage\n{"row": 1}\n')
    with pytest.raises(BatchError, match="line 2 is not a result line"):
        done_rows(out)
