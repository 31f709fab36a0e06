"""Overload on a live app: one Classifier replica with a tiny queue behind an ingress that admits
64 pairs at a time, driven far past its capacity over HTTP. What cannot be admitted is refused at
once with a JSON 503 and Retry-After on every scoring route: zsc's own and Hugging Face's by the
ingress's bound (`ingress.max_scoring_pairs`), job submission (whose label check is not bounded
there) by the Classifier's queue; nothing is a 500 or plain text; the health check answers
throughout; and every admitted request is scored exactly as when idle.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest

from serve_app.core.inflight import SCORING_FULL_MESSAGE

pytestmark = pytest.mark.ray

TEXTS = [f"text number {i} about football, cooking and the weather" for i in range(8)]
LABELS = ["sports", "cooking", "weather", "politics", "music", "travel", "science", "art"]
CLASSIFY = {"texts": TEXTS, "labels": LABELS}
HF = {"inputs": TEXTS[:4], "parameters": {"candidate_labels": LABELS}}
JOB = {"texts": TEXTS[:2], "labels": LABELS[:2]}
# Far past 2 ongoing + 2 queued: every wave sends this many requests at once.
WAVE = 40
WAVES = 4


@dataclass
class Answer:
    route: str
    status: int
    headers: httpx.Headers
    text: str
    seconds: float


@pytest.fixture(scope="module")
def url(deploy_app) -> str:
    return deploy_app(
        "overload",
        classifier={"num_cpus": 0.5, "max_ongoing_requests": 2, "max_queued_requests": 2},
        # One /v1/classify request (8 x 8 pairs) or two Hugging Face ones (4 x 8) at a time.
        ingress={"max_scoring_pairs": 64},
        jobs={},
    )


async def _send(client: httpx.AsyncClient, route: str, body: dict) -> Answer:
    started = time.perf_counter()
    response = await client.post(route, json=body)
    return Answer(
        route,
        response.status_code,
        response.headers,
        response.text,
        time.perf_counter() - started,
    )


async def _drive(url: str) -> tuple[list[Answer], list[int]]:
    health: list[int] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=WAVE + 4, max_keepalive_connections=WAVE + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def poll_health() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as own:
                while not stop.is_set():
                    health.append((await own.get("/healthz")).status_code)
                    await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll_health())
        answers: list[Answer] = []
        for _ in range(WAVES):
            routes = [("/v1/classify", CLASSIFY), ("/", HF), ("/v1/jobs", JOB)]
            wave = [_send(client, *routes[i % 5 % 3]) for i in range(WAVE)]
            answers.extend(await asyncio.gather(*wave))
        stop.set()
        await poller
    return answers, health


def test_overload_is_refused_in_json_and_admitted_requests_are_exact(url: str) -> None:
    idle = httpx.post(f"{url}/v1/classify", json=CLASSIFY, timeout=60)
    assert idle.status_code == 200, idle.text
    expected = idle.json()["results"]
    idle_hf = httpx.post(f"{url}/", json=HF, timeout=60)
    assert idle_hf.status_code == 200, idle_hf.text

    answers, health = asyncio.run(_drive(url))

    statuses = Counter((a.route, a.status) for a in answers)
    assert {s for _, s in statuses} <= {200, 202, 503}, statuses
    refused = [a for a in answers if a.status == 503]
    assert refused, f"nothing was refused: {statuses}"
    assert any(a.status == 200 for a in answers), statuses
    # Every scoring route sheds in the envelope: zsc's own, Hugging Face's, job submission.
    assert {a.route for a in refused} == {"/v1/classify", "/", "/v1/jobs"}, statuses
    for answer in refused:
        assert answer.headers.get("content-type") == "application/json", (
            answer.route,
            answer.text,
            answer.headers,
        )
        assert answer.headers["retry-after"] == "1"
        body = httpx.Response(503, content=answer.text).json()
        assert body["error"]["type"] == "overloaded", body
    # The scoring routes meet the ingress's bound (job checks fill the Classifier's queue too,
    # so some of theirs meet that instead); job submission only the Classifier's queue.
    by_bound = Counter(a.route for a in refused if SCORING_FULL_MESSAGE in a.text)
    assert by_bound["/v1/classify"] and by_bound["/"] and not by_bound["/v1/jobs"], by_bound
    assert health and set(health) == {200}, Counter(health)

    for answer in answers:
        if answer.status != 200:
            continue
        body = httpx.Response(200, content=answer.text).json()
        if answer.route == "/v1/classify":
            for got, want in zip(body["results"], expected, strict=True):
                assert got["labels"] == want["labels"]
                assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
        else:
            _same_hf(body, idle_hf.json())


def _same_hf(got: list, want: list) -> None:
    for got_text, want_text in zip(got, want, strict=True):
        got_scores = {row["label"]: row["score"] for row in got_text}
        want_scores = {row["label"]: row["score"] for row in want_text}
        assert got_scores.keys() == want_scores.keys()
        for label, score in want_scores.items():
            assert got_scores[label] == pytest.approx(score, abs=1e-5)


# --- readiness while the queue is full ---------------------------------------------------------

BUSY_APP, BUSY_S = "busy-probe", 5.0


async def test_a_deployment_whose_queue_is_full_counts_as_up() -> None:
    """/healthz's probe of a deployment whose every replica is busy and whose queue is full: the
    router refuses the `ping` (BackPressureError), and that counts as an answer, not "missing"."""
    from ray import serve
    from ray.serve.exceptions import BackPressureError

    from serve_app.core.health import Liveness
    from serve_app.deployments.scoring import readiness_probe

    @serve.deployment(
        max_ongoing_requests=1, max_queued_requests=1, ray_actor_options={"num_cpus": 0}
    )
    class Busy:
        async def ping(self) -> None:
            await asyncio.sleep(BUSY_S)

    handle = serve.run(Busy.bind(), name=BUSY_APP, route_prefix=None)
    try:
        running = handle.ping.remote()  # takes the replica's one slot
        await asyncio.sleep(0.5)
        queued = handle.ping.remote()  # takes the queue's one place
        await asyncio.sleep(0.5)
        with pytest.raises(BackPressureError):  # so the router refuses whatever comes next
            await handle.ping.remote()
        liveness = Liveness({"Busy": readiness_probe(handle)})
        assert await liveness.missing(timeout_s=2.0) == []
        await running
        await queued
    finally:
        serve.delete(BUSY_APP, _blocking=False)
