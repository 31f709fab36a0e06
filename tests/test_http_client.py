"""The HTTP client and the batch runner against scripted answers (httpx.MockTransport): no Ray."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app import http_client
from serve_app.batch import BatchError, BatchSettings, Row, done_rows, run_batch
from serve_app.http_client import AsyncZeroShotClient, RetryPolicy, ZeroShotClient, ZscHTTPError

NO_JITTER = RetryPolicy(max_retries=3, jitter=0.0)


def answer(texts: list[str]) -> dict[str, Any]:
    return {
        "model": "m",
        "results": [{"sequence": t, "labels": ["a", "b"], "scores": [0.75, 0.25]} for t in texts],
        "usage": {"pairs": 2 * len(texts)},
        "truncated": [],
    }


def limited(status: int, retry_after: str | None, message: str = "slow down") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {"type": "rate_limited", "message": message}})


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(http_client.time, "sleep", waited.append)
    return waited


def client_for(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> ZeroShotClient:
    return ZeroShotClient(
        kwargs.pop("base_url", "http://zsc.test"), transport=httpx.MockTransport(handler), **kwargs
    )


def test_429_is_retried_after_retry_after(sleeps: list[float]) -> None:
    replies = iter([limited(429, "2"), limited(503, "1"), None])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(replies) or httpx.Response(200, json=answer(json.loads(request.content)["texts"]))

    with client_for(handler, base_url="http://zsc.test/zsc2", api_key="k1", retry=NO_JITTER) as client:
        body = client.classify(["x"], ["a", "b"], multi_label=True)
    assert body["results"][0]["labels"] == ["a", "b"]
    assert sleeps == [2.0, 1.0]
    assert [r.url.path for r in seen] == ["/zsc2/v1/classify"] * 3
    assert seen[0].headers["authorization"] == "Bearer k1"
    assert json.loads(seen[0].content) == {
        "texts": ["x"], "labels": ["a", "b"], "hypothesis_template": "This example is {}.", "multi_label": True
    }


def test_retries_are_bounded_and_the_error_is_typed(sleeps: list[float]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return limited(429, "1")

    with client_for(handler, retry=NO_JITTER) as client, pytest.raises(ZscHTTPError) as caught:
        client.classify("x", "a,b")
    assert len(calls) == 4 and len(sleeps) == 3
    assert (caught.value.status, caught.value.type, caught.value.retry_after) == (429, "rate_limited", 1.0)


def test_a_wait_longer_than_allowed_is_not_slept(sleeps: list[float]) -> None:
    with client_for(lambda r: limited(429, "3600"), retry=NO_JITTER) as client:
        with pytest.raises(ZscHTTPError, match="retry after 3600"):
            client.classify("x", "a")
    assert sleeps == []


def test_errors_carry_status_type_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/classify":
            return httpx.Response(422, json={"error": {"type": "invalid_request", "message": "labels is empty"}})
        return httpx.Response(502, text="<html>bad gateway</html>")

    with client_for(handler) as client:
        with pytest.raises(ZscHTTPError) as caught:
            client.classify("x", "")
        assert (caught.value.status, caught.value.type, caught.value.message) == (
            422, "invalid_request", "labels is empty"
        )
        with pytest.raises(ZscHTTPError) as caught:
            client.model_info()
        assert caught.value.status == 502 and "bad gateway" in caught.value.message


def test_a_retried_job_submission_keeps_its_idempotency_key(sleeps: list[float]) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            return limited(503, "1")
        return httpx.Response(202, json={"id": "j1", "state": "queued"})

    with client_for(handler, retry=NO_JITTER) as client:
        assert client.submit_job(["a"], "x,y", metadata={"k": 1})["id"] == "j1"
    assert len(keys) == 2 and keys[0] == keys[1]


def test_wait_job_polls_then_joins_every_page(sleeps: list[float]) -> None:
    states = iter(["queued", "running", "succeeded"])
    pages = {1: [{"sequence": "a"}, {"sequence": "b"}], 2: [{"sequence": "c"}, None]}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["page_size"] == "2"
        page = int(request.url.params["page"])
        state = next(states) if page == 1 else "succeeded"
        if state != "succeeded":
            return httpx.Response(200, json={"id": "j1", "state": state, "results": None})
        paging = {"page": page, "page_size": 2, "total_pages": 2, "has_more": page < 2}
        return httpx.Response(
            200, json={"id": "j1", "state": state, "results": pages[page], "results_page": paging}
        )

    with client_for(handler) as client:
        job = client.wait_job("j1", poll_interval_s=0.01, page_size=2)
    assert job["state"] == "succeeded"
    assert job["results"] == [{"sequence": "a"}, {"sequence": "b"}, {"sequence": "c"}, None]
    assert len(sleeps) == 2


async def test_batch_rides_out_a_429_and_isolates_a_bad_row(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        texts = body.get("texts") or [body["text"]]
        calls.append(texts)
        if len(calls) == 2:
            return limited(429, "0")
        if "too long" in texts:
            return httpx.Response(413, json={"error": {"type": "limit_exceeded", "message": "texts[0] too long"}})
        return httpx.Response(200, json=answer(texts))

    rows = [Row(i, t) for i, t in enumerate(["one", "two", "too long", "four", "five"])]
    rows.append(Row(5, None, "r5", problem="no text"))
    out = tmp_path / "out.jsonl"
    async with AsyncZeroShotClient("http://zsc.test", transport=httpx.MockTransport(handler)) as client:
        summary = await run_batch(client, rows, out, BatchSettings("a,b", "It is {}.", False, 2, 1))

    lines = {line["row"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert sorted(lines) == [0, 1, 2, 3, 4, 5]
    assert lines[2]["error"] == {"type": "limit_exceeded", "message": "texts[0] too long"}
    assert lines[5] == {"row": 5, "id": "r5", "error": {"type": "invalid_input", "message": "no text"}}
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
