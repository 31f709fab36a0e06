"""Overload at the HTTP edge, in-process (tests/edge.py): with `ingress.max_scoring_pairs` pairs
under way, a scoring request is refused at once with a JSON 503 `overloaded` and Retry-After, on
zsc's route and the Hugging Face one, before its body is read when nothing more fits; what is
admitted is scored exactly; the other routes still answer. Over Ray:
tests/integration/test_overload_serve.py."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from edge import EngineScorer, asgi_client, edge_app

from serve_app.config import AppConfig
from serve_app.core.errors import Overloaded
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.engine.engine import Engine
from serve_app.http.schemas import ClassifyRequest

LABELS = ["sports", "cooking"]


def body(texts: int) -> dict[str, Any]:
    """A /v1/classify body of `texts` x 2 pairs."""
    return {
        "texts": [f"text {i}: the striker scored twice." for i in range(texts)],
        "labels": LABELS,
    }


class HeldScorer(EngineScorer):
    """Scores once `go` is set: requests stay under way until the test lets them through."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.go = asyncio.Event()

    async def classify(self, request: PreparedRequest) -> Classification:
        self.requests.append(request)
        await self.go.wait()
        return self.engine.classify(request)


def app_for(engine: Engine, scorer: EngineScorer, max_scoring_pairs: int) -> Any:
    config = AppConfig.model_validate(
        {
            "model": engine.source,
            "jobs": {"enabled": False},
            "ingress": {"max_scoring_pairs": max_scoring_pairs},
        }
    )
    return edge_app(config, scorer)


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the requests did not reach the scorer")


async def at_once(request: Any) -> httpx.Response:
    """The answer to a request that must not wait (a request wrongly admitted would)."""
    answer: httpx.Response = await asyncio.wait_for(request, timeout=10)
    return answer


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["type"] == "overloaded"


def test_past_the_bound_is_refused_at_once_and_admitted_requests_are_exact(
    tiny_engine: Engine,
) -> None:
    scorer = HeldScorer(tiny_engine)
    app = app_for(tiny_engine, scorer, max_scoring_pairs=8)
    inflight = app.state.services.inflight

    async def scenario() -> None:
        async with asgi_client(app) as client:
            first = asyncio.create_task(client.post("/v1/classify", json=body(2)))
            await until(lambda: len(scorer.requests) == 1)
            # 4 pairs under way: 6 more would pass 8, and are refused once their size is known.
            assert_refused(await at_once(client.post("/v1/classify", json=body(3))))
            second = asyncio.create_task(client.post("/v1/classify", json=body(2)))
            await until(lambda: len(scorer.requests) == 2)
            assert inflight.pairs == 8 and inflight.full
            # Full: refused before the body is read (a malformed one is not even a 400).
            assert_refused(await at_once(client.post("/v1/classify", content=b"{not json")))
            hf = {"inputs": "the striker scored", "parameters": {"candidate_labels": LABELS}}
            assert_refused(await at_once(client.post("/", json=hf)))
            # The rest of the API answers throughout.
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/model")).status_code == 200
            assert (await client.post("/v1/classify", json={"texts": []})).status_code == 503
            scorer.go.set()
            answers = [await first, await second]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            want = tiny_engine.classify(_prepared(app, body(2)))
            for got, expected in zip(answer.json()["results"], want.results, strict=True):
                assert got["labels"] == expected.labels
                assert got["scores"] == pytest.approx(expected.scores, abs=1e-6)
        assert (inflight.pairs, inflight.requests) == (0, 0)
        assert inflight.refused == 4

    asyncio.run(scenario())


def _prepared(app: Any, payload: dict[str, Any]) -> PreparedRequest:
    prepared: PreparedRequest = ClassifyRequest.model_validate(payload).prepared(
        app.state.services.config
    )
    return prepared


def test_one_request_larger_than_the_bound_is_admitted_when_none_is_under_way(
    tiny_engine: Engine,
) -> None:
    app = app_for(tiny_engine, EngineScorer(tiny_engine), max_scoring_pairs=8)

    async def send() -> httpx.Response:
        async with asgi_client(app) as client:
            return await client.post("/v1/classify", json=body(10))

    answer = asyncio.run(send())
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 10


class RefusedBehind(EngineScorer):
    """The Classifier's own queue is full (what the Scorer makes of Serve's BackPressureError)."""

    async def classify(self, request: PreparedRequest) -> Classification:
        raise Overloaded("the classifier's queue is full")


def test_pairs_are_released_when_scoring_fails(tiny_engine: Engine) -> None:
    app = app_for(tiny_engine, RefusedBehind(tiny_engine), max_scoring_pairs=8)

    async def send() -> list[httpx.Response]:
        async with asgi_client(app) as client:
            return [await client.post("/v1/classify", json=body(4)) for _ in range(3)]

    for answer in asyncio.run(send()):
        assert_refused(answer)
    inflight = app.state.services.inflight
    assert (inflight.pairs, inflight.requests, inflight.refused) == (0, 0, 0)
