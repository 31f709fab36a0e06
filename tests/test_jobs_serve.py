"""HTTP jobs end to end on a real local Serve app and the tiny model.

One application, `jobs`, with its own SQLite file, small chunks (so a 2,000-text job is many
chunks) and a retry schedule of seconds. Webhooks go to a real HTTP receiver on 127.0.0.1,
allow-listed in the app's config. The restart test deletes and redeploys the app, so it runs last.
"""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import ray
from ray import serve
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import free_port
from parity import assert_same_results

pytestmark = pytest.mark.ray

APP = "jobs"
SECRET = "whsec_" + base64.b64encode(b"zsc jobs test secret, 32 bytes!!").decode()
LABELS = ["sports", "politics", "technology"]
N_TEXTS = 2000
CHUNK_TEXTS = 25
RETRY_SCHEDULE_S = [0, 0.3, 0.3, 1.5, 1.5]  # five attempts over about 3.6 s
# Submissions from this loopback address draw on a small bucket (the limiter keys anonymous
# clients by address); everyone else's is too large to matter.
SLOW_CLIENT = "127.0.0.9"
SLOW_RATE, SLOW_BURST = 100.0, 50.0
T = TypeVar("T")


def make_texts(n: int) -> list[str]:
    words = (
        "the team won a match vote government phone battery market bank rain city music film "
        "doctor school engineer car price storm election software camera player coach"
    ).split()
    rng = random.Random(7)
    return [
        f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for i in range(n)
    ]


TEXTS = make_texts(N_TEXTS)


def app_args(db_path: Path) -> dict[str, Any]:
    return {
        "limits": {"max_job_texts": 2500},
        "rate_limit": {
            "enabled": True,
            "default": {"rate": 1e6, "burst": 1e6},
            "overrides": {SLOW_CLIENT: {"rate": SLOW_RATE, "burst": SLOW_BURST}},
            "timeout_s": 2.0,  # 2 shared cores: a slow answer must not count as an outage
        },
        "jobs": {
            "db_path": str(db_path),
            "chunk_texts": CHUNK_TEXTS,
            "max_parallel_chunks": 2,
            "webhook": {
                "secret": SECRET,
                "timeout_s": 2.0,
                "retry_schedule_s": RETRY_SCHEDULE_S,
                "allow_hosts": ["127.0.0.1"],
            },
        },
    }


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs") / "jobs.sqlite3"


@pytest.fixture(scope="module")
def url(deploy_app: Callable[..., str], db_path: Path) -> str:
    return deploy_app(APP, **app_args(db_path))


@pytest.fixture(scope="module")
def reference(url: str) -> list[dict[str, Any]]:
    """What /v1/classify answers for TEXTS, in order (in requests under limits.max_texts)."""
    results: list[dict[str, Any]] = []
    with httpx.Client(timeout=120) as client:
        for start in range(0, N_TEXTS, 250):
            answer = client.post(
                f"{url}/v1/classify", json={"texts": TEXTS[start : start + 250], "labels": LABELS}
            )
            assert answer.status_code == 200, answer.text
            results += answer.json()["results"]
    return results


# ---- helpers ------------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(url: str, texts: list[str], **extra: Any) -> dict[str, Any]:
    body = {"texts": texts, "labels": LABELS, **extra}
    answer = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()


def get_job(url: str, job_id: str, **params: Any) -> dict[str, Any]:
    answer = httpx.get(f"{url}/v1/jobs/{job_id}", params=params, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_until_done(url: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = get_job(url, job_id)
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(ended, timeout, f"job {job_id} to end")


def wait_for_chunks(url: str, job_id: str, chunks: int) -> dict[str, Any]:
    def enough() -> dict[str, Any] | None:
        job = get_job(url, job_id)
        assert job["state"] in ("queued", "running"), f"job ended too soon: {job['state']}"
        return job if job["progress"]["completed_chunks"] >= chunks else None

    return wait_for(enough, 120, f"{chunks} chunks of job {job_id}")


def all_results(url: str, job_id: str, page_size: int = 1000) -> list[dict[str, Any] | None]:
    results: list[dict[str, Any] | None] = []
    page = 1
    while True:
        job = get_job(url, job_id, page=page, page_size=page_size)
        results += job["results"]
        if not job["results_page"]["has_more"]:
            return results
        page += 1


def classifier_replicas(app: str) -> list[str]:
    prefix = f"SERVE_REPLICA::{app}#Classifier#"
    actors = ray.util.list_named_actors(all_namespaces=True)
    return [a["name"] for a in actors if a["name"].startswith(prefix)]


class Receiver:
    """A real webhook receiver on 127.0.0.1: records every request it answers."""

    def __init__(self, port: int, status: int = 200):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.close()


# ---- results ------------------------------------------------------------------------------


def test_job_gives_the_classify_results(url: str, reference: list[dict[str, Any]]) -> None:
    answer = httpx.post(f"{url}/v1/jobs", json={"texts": TEXTS, "labels": LABELS}, timeout=60)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["state"] in ("queued", "running") and job["created_at"] > 0
    assert answer.headers["location"] == f"{url}/v1/jobs/{job['id']}"
    assert job["progress"]["total_texts"] == N_TEXTS
    assert job["progress"]["total_chunks"] == N_TEXTS // CHUNK_TEXTS

    seen: list[int] = []

    def done() -> dict[str, Any] | None:
        current = get_job(url, job["id"])
        seen.append(current["progress"]["completed_texts"])
        return current if current["state"] == "succeeded" else None

    final = wait_for(done, 180, "the job to succeed")
    assert seen == sorted(seen), "progress went backwards"
    assert len({n for n in seen if 0 < n < N_TEXTS}) >= 2, f"progress never advanced: {seen}"
    assert final["progress"]["completed_texts"] == N_TEXTS
    assert final["created_at"] <= final["started_at"] <= final["finished_at"]
    assert final["cancelled_at"] is None and final["error"] is None
    assert final["results_page"] == {
        "page": 1, "page_size": 1000, "total_pages": 2, "has_more": True
    }

    # Scores match within float32 noise (parity's 1e-5): chunks share batches with other pairs
    # than the /v1/classify calls did, and padding to another length moves the last bits.
    assert_same_results(all_results(url, job["id"], page_size=300), reference)

    listed = httpx.get(f"{url}/v1/jobs", params={"limit": 1}, timeout=30).json()
    assert listed["data"][0]["id"] == job["id"] and "results" not in listed["data"][0]


def test_cancel_stops_the_job_and_keeps_partial_results(
    url: str, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS)
    wait_for_chunks(url, job["id"], 2)
    answer = httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_at"] is not None
    done = cancelled["progress"]["completed_texts"]
    assert 0 < done < N_TEXTS

    time.sleep(1.5)  # chunks that were in flight must not count after the cancel
    later = get_job(url, job["id"], page_size=1000)
    assert later["state"] == "cancelled" and later["progress"]["completed_texts"] == done
    assert later["finished_at"] is None
    results = all_results(url, job["id"])
    assert len(results) == N_TEXTS
    finished = [i for i, result in enumerate(results) if result is not None]
    assert len(finished) == done
    assert_same_results([results[i] for i in finished], [reference[i] for i in finished])
    # Cancelling again changes nothing.
    again = httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", timeout=30).json()
    assert again["cancelled_at"] == cancelled["cancelled_at"]


# ---- submission ---------------------------------------------------------------------------


def test_mistakes_are_4xx_at_submission(url: str) -> None:
    post = lambda body: httpx.post(f"{url}/v1/jobs", json=body, timeout=30)  # noqa: E731
    too_many = post({"texts": ["a"] * 2501, "labels": LABELS})
    assert too_many.status_code == 413 and too_many.json()["error"]["type"] == "limit_exceeded"
    assert post({"texts": ["a"], "labels": []}).status_code == 422
    assert post({"texts": ["a"]}).status_code == 422
    for callback in ("http://10.0.0.1/hook", "ftp://example.com/hook", "http://[::1]/hook"):
        refused = post({"texts": ["a"], "labels": LABELS, "callback_url": callback})
        assert 400 <= refused.status_code < 500, (callback, refused.text)
        assert refused.status_code != 429 and "error" in refused.json()

    missing = httpx.get(f"{url}/v1/jobs/job_nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert httpx.post(f"{url}/v1/jobs/job_nope/cancel", timeout=30).status_code == 404
    bad_cursor = httpx.get(f"{url}/v1/jobs", params={"cursor": "job_nope"}, timeout=30)
    assert bad_cursor.status_code == 400


def test_idempotency_key_returns_the_same_job(url: str) -> None:
    body = {"texts": ["one", "two"], "labels": LABELS, "metadata": {"batch": 7}}
    headers = {"Idempotency-Key": f"key-{time.time()}"}
    first = httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=30)
    second = httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=30)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["metadata"] == {"batch": 7}
    reused = httpx.post(
        f"{url}/v1/jobs", json={**body, "texts": ["three"]}, headers=headers, timeout=30
    )
    assert reused.status_code == 422 and reused.json()["error"]["type"] == "idempotency_key_reused"
    assert wait_until_done(url, first.json()["id"])["state"] == "succeeded"


def test_jobs_wait_for_rate_limit_tokens(url: str, reference: list[dict[str, Any]]) -> None:
    texts = 100  # 300 pairs, in chunks of 75: more than the burst, so chunks wait for tokens
    transport = httpx.HTTPTransport(local_address=SLOW_CLIENT)
    with httpx.Client(transport=transport, timeout=60) as client:
        answer = client.post(f"{url}/v1/jobs", json={"texts": TEXTS[:texts], "labels": LABELS})
    assert answer.status_code == 202, answer.text
    final = wait_until_done(url, answer.json()["id"], timeout=60)
    assert final["state"] == "succeeded", final["error"]
    pairs = texts * len(LABELS)
    assert final["finished_at"] - final["created_at"] >= 0.8 * (pairs - SLOW_BURST) / SLOW_RATE
    assert_same_results(final["results"], reference[:texts])


# ---- webhooks -----------------------------------------------------------------------------


def test_webhook_arrives_signed(url: str, receiver: Receiver) -> None:
    job = submit(url, TEXTS[:10], callback_url=receiver.url)
    wait_for(lambda: receiver.requests, 60, "the webhook")
    headers, body = receiver.requests[0]

    payload = Webhook(SECRET).verify(body, headers)  # the independent implementation
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"succeeded", b"failed"), headers)

    def delivered() -> dict[str, Any] | None:
        [delivery] = get_job(url, job["id"])["deliveries"]
        return delivery if delivery["state"] == "delivered" else None

    delivery = wait_for(delivered, 30, "the delivery to be recorded")
    assert delivery["event_id"] == headers["webhook-id"]
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert len(receiver.requests) == 1


def test_receiver_down_at_first_gets_the_event_later(url: str) -> None:
    port = free_port()
    job = submit(url, TEXTS[:10], callback_url=f"http://127.0.0.1:{port}/hook")

    def failed_twice() -> dict[str, Any] | None:
        deliveries = get_job(url, job["id"])["deliveries"]
        return deliveries[0] if deliveries and len(deliveries[0]["attempts"]) >= 2 else None

    down = wait_for(failed_twice, 60, "two failed attempts")
    assert down["state"] == "pending" and all(a["status_code"] is None for a in down["attempts"])
    receiver = Receiver(port)
    try:
        wait_for(lambda: receiver.requests, 30, "the late webhook")
        headers, body = receiver.requests[0]
        assert headers["webhook-id"] == down["event_id"]  # the same id on every retry
        assert Webhook(SECRET).verify(body, headers)["data"]["id"] == job["id"]
        final = wait_for(
            lambda: (d := get_job(url, job["id"])["deliveries"][0])["state"] == "delivered" and d,
            30,
            "the delivery to be recorded",
        )
        assert len(final["attempts"]) >= 3 and final["attempts"][-1]["status_code"] == 200
    finally:
        receiver.close()


def test_receiver_never_up_leaves_the_job_succeeded(
    url: str, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS[:30], callback_url=f"http://127.0.0.1:{free_port()}/hook")

    def given_up() -> dict[str, Any] | None:
        current = get_job(url, job["id"])
        deliveries = current["deliveries"]
        return current if deliveries and deliveries[0]["state"] == "failed" else None

    final = wait_for(given_up, 60, "the delivery to be given up")
    assert final["state"] == "succeeded"
    [delivery] = final["deliveries"]
    assert len(delivery["attempts"]) == len(RETRY_SCHEDULE_S)
    assert delivery["next_attempt_at"] is None
    assert_same_results(final["results"], reference[:30])


# ---- failures -----------------------------------------------------------------------------


def test_job_survives_the_classifier_replica_dying(
    url: str, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS)
    wait_for_chunks(url, job["id"], 3)
    [replica] = classifier_replicas(APP)
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    final = wait_until_done(url, job["id"], timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert replica not in classifier_replicas(APP)  # a new replica finished the job
    assert_same_results(all_results(url, job["id"]), reference)


def test_restart_of_the_whole_app_resumes_the_job(
    url: str, deploy_app: Callable[..., str], db_path: Path, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS)
    wait_for_chunks(url, job["id"], 3)
    serve.delete(APP)

    def recorded() -> dict[int, float]:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return dict(
                db.execute(
                    "SELECT chunk_index, recorded_at FROM chunks WHERE job_id = ?", (job["id"],)
                ).fetchall()
            )

    before = recorded()
    total_chunks = N_TEXTS // CHUNK_TEXTS
    assert 3 <= len(before) < total_chunks

    assert deploy_app(APP, **app_args(db_path)) == url
    final = wait_until_done(url, job["id"], timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert final["progress"]["completed_texts"] == N_TEXTS
    after = recorded()
    assert sorted(after) == list(range(total_chunks))  # none lost
    assert {i: after[i] for i in before} == before  # recorded chunks were not redone
    assert_same_results(all_results(url, job["id"]), reference)
