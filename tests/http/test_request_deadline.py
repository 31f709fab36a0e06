"""`request_timeout_s` on the in-process edge: a request not answered in time is a JSON 504 with
Retry-After on every route, its scoring is cancelled, and answers in time are untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from edge import EngineScorer, asgi_client, engine_app

from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.http.middleware.deadline import inner_deadline

CLASSIFY = {"text": "The striker scored twice.", "labels": ["sports", "cooking"]}
HF = {"inputs": "The striker scored twice.", "parameters": {"candidate_labels": ["a", "b"]}}


class StalledScorer(EngineScorer):
    """Scores after a stall as long as `stall_s` (a queue that does not move)."""

    stall_s = 0.0
    cancelled = 0

    async def classify(self, request: PreparedRequest) -> Classification:
        try:
            await asyncio.sleep(self.stall_s)
        except asyncio.CancelledError:
            StalledScorer.cancelled += 1
            raise
        return await super().classify(request)


@pytest.mark.parametrize(("route", "body"), [("/v1/classify", CLASSIFY), ("/", HF)])
def test_a_request_past_its_timeout_is_a_json_504(
    tiny_model_dir: Path, route: str, body: dict
) -> None:
    app, services = engine_app(tiny_model_dir, request_timeout_s=0.5)
    scorer = StalledScorer(services.scorer.engine)
    services.scorer = scorer

    async def send(stall_s: float) -> tuple[int, dict, dict]:
        scorer.stall_s = stall_s
        async with asgi_client(app, "10.0.0.1") as client:
            answer = await client.post(route, json=body)
        return answer.status_code, dict(answer.headers), answer.json()

    StalledScorer.cancelled = 0
    status, headers, answer = asyncio.run(send(30.0))
    assert status == 504, answer
    assert headers["content-type"] == "application/json"
    assert headers["retry-after"] == "1"
    assert answer["error"]["type"] == "timeout"
    assert "request_timeout_s=0.5" in answer["error"]["message"]
    assert StalledScorer.cancelled == 1  # the scoring was cancelled, not left running

    status, _, answer = asyncio.run(send(0.0))
    assert status == 200, answer


def test_the_bound_sits_just_inside_the_configured_timeout() -> None:
    assert inner_deadline(120.0) == pytest.approx(119.5)
    assert inner_deadline(2.0) == pytest.approx(1.9)
