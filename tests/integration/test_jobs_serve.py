"""HTTP jobs end to end on a real local Serve app and the tiny model.

One application, `jobs`, with its own SQLite file, small chunks (so a 2,000-text job is many
chunks) and a retry schedule of seconds. Webhooks go to a real HTTP receiver on 127.0.0.1,
allow-listed in the app's config. The last two tests delete and redeploy the app (the last one
with a smaller window), so they run last.
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
from live import SERVE_NAMESPACE, replica_names
from parity import assert_same_results
from ray import serve
from ray.serve.handle import DeploymentHandle
from standardwebhooks import Webhook, WebhookVerificationError
from transformers import AutoTokenizer

from serve_app.devtools.ports import free_port

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


def recorded_chunks(db_path: Path, job_id: str) -> dict[int, float]:
    """chunk index -> when the store recorded it, read from the job store's file itself (every
    chunk has a row from submission on; a recorded one has its results)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return dict(
            db.execute(
                "SELECT chunk_index, recorded_at FROM chunks"
                " WHERE job_id = ? AND results IS NOT NULL",
                (job_id,),
            ).fetchall()
        )


def classifier() -> DeploymentHandle:
    return serve.get_deployment_handle("Classifier", app_name=APP)


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
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
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
        "page": 1,
        "page_size": 1000,
        "total_pages": 2,
        "has_more": True,
    }

    # Scores match within float32 noise (parity's 1e-5): chunks share batches with other pairs
    # than the /v1/classify calls did, and padding to another length moves the last bits.
    assert_same_results(all_results(url, job["id"], page_size=300), reference)

    listed = httpx.get(f"{url}/v1/jobs", params={"limit": 1}, timeout=30).json()
    assert listed["data"][0]["id"] == job["id"] and "results" not in listed["data"][0]


def test_cancel_stops_the_job_and_keeps_partial_results(
    url: str, db_path: Path, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS)
    wait_for_chunks(url, job["id"], 4)
    answer = httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_at"] is not None
    done = cancelled["progress"]["completed_texts"]
    assert 0 < done < N_TEXTS

    # How fast chunks landed before the cancel; after it, wait for several chunks' worth, so
    # that had chunks kept running, some would have been recorded or reached the model.
    before = sorted(recorded_chunks(db_path, job["id"]).values())
    assert len(before) >= 4
    chunk_s = (before[-1] - before[0]) / (len(before) - 1)
    time.sleep(max(1.0, 2 * chunk_s))  # a forward that was running at the cancel ends
    classifier().reset_batch_stats.remote().result(timeout_s=60)
    time.sleep(max(2.0, 5 * chunk_s))
    stats = classifier().batch_stats.remote().result(timeout_s=60)
    assert stats["batches"] == 0, f"the model still ran the cancelled job's chunks: {stats}"
    recorded = recorded_chunks(db_path, job["id"])
    assert len(recorded) == cancelled["progress"]["completed_chunks"]
    assert max(recorded.values()) <= cancelled["cancelled_at"], "a chunk landed after the cancel"

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


def delivered_event(url: str, job_id: str, receiver: Receiver) -> dict[str, Any]:
    """The one event the receiver got for the job, verified with the independent
    implementation, once the job records its delivery."""
    wait_for(lambda: receiver.requests, 60, f"the webhook of job {job_id}")
    headers, body = receiver.requests[0]
    payload = Webhook(SECRET).verify(body, headers)

    def delivered() -> dict[str, Any] | None:
        [delivery] = get_job(url, job_id)["deliveries"]
        return delivery if delivery["state"] == "delivered" else None

    delivery = wait_for(delivered, 30, "the delivery to be recorded")
    assert delivery["event_id"] == headers["webhook-id"]
    assert len(receiver.requests) == 1
    return payload


# A label whose hypothesis alone is longer than the tiny model's 64-token window: no text fits
# beside it.
UNFIT_LABEL = " ".join(["zebra quartz"] * 20)[:200]


def test_a_label_that_cannot_fit_the_window_is_refused_at_submission(
    url: str, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert len(tokenizer(f"This example is {UNFIT_LABEL}.")["input_ids"]) > 64
    answer = httpx.post(
        f"{url}/v1/jobs", json={"texts": TEXTS[:60], "labels": ["sports", UNFIT_LABEL]}, timeout=60
    )
    assert answer.status_code == 422, answer.text
    assert "does not fit the model's window" in answer.json()["error"]["message"]


def fitting_label(tokenizer: Any, low: int, high: int) -> str:
    """A label whose hypothesis has between low and high tokens."""
    words = ["zebra"]
    while len(tokenizer(f"This example is {' '.join(words)}.")["input_ids"]) < low:
        words.append("quartz" if len(words) % 2 else "zebra")
    label = " ".join(words)
    assert len(tokenizer(f"This example is {label}.")["input_ids"]) <= high
    return label


def test_a_cancelled_job_sends_a_signed_job_cancelled_event(url: str, receiver: Receiver) -> None:
    job = submit(url, TEXTS, callback_url=receiver.url)
    wait_for_chunks(url, job["id"], 1)
    answer = httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled", answer.text

    payload = delivered_event(url, job["id"], receiver)
    final = get_job(url, job["id"])
    assert final["state"] == "cancelled"
    assert payload["type"] == "job.cancelled"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "cancelled"
    assert payload["data"]["progress"] == final["progress"]
    assert 0 < final["progress"]["completed_chunks"] < final["progress"]["total_chunks"]


# ---- failures -----------------------------------------------------------------------------


def test_job_survives_the_classifier_replica_dying(
    url: str, db_path: Path, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS)
    wait_for_chunks(url, job["id"], 3)
    [old] = replica_names(APP, "Classifier")
    before = recorded_chunks(db_path, job["id"])
    ray.kill(ray.get_actor(old, namespace=SERVE_NAMESPACE), no_restart=True)
    killed_at = time.time()  # the store's clock: recorded_at is time.time() in the job runner

    final = wait_until_done(url, job["id"], timeout=240)
    assert final["state"] == "succeeded", final["error"]
    total_chunks = N_TEXTS // CHUNK_TEXTS
    assert final["progress"]["completed_chunks"] == total_chunks
    # Every chunk recorded, once: (job, chunk) is the table's key, and those recorded before the
    # kill were not redone.
    chunks = recorded_chunks(db_path, job["id"])
    assert sorted(chunks) == list(range(total_chunks))
    assert {i: chunks[i] for i in before} == before
    assert_same_results(all_results(url, job["id"]), reference)

    # A new replica served the rest: another replica id, which ran the pairs of the chunks
    # recorded after the kill (its batch stats start empty; the cache is off), all but the
    # max_parallel_chunks (2) that the old one may have been finishing as it died.
    [new] = replica_names(APP, "Classifier")
    assert new != old
    stats = classifier().batch_stats.remote().result(timeout_s=60)
    assert stats["replica"] == new.rsplit("#", 1)[-1] != old.rsplit("#", 1)[-1]
    after_kill = [i for i, at in chunks.items() if at > killed_at]
    assert len(after_kill) >= total_chunks - len(before) - 2
    forwarded = round(stats["batches"] * stats["mean_pairs_per_batch"])
    assert forwarded >= (len(after_kill) - 2) * CHUNK_TEXTS * len(LABELS), (forwarded, stats)


def test_restart_of_the_whole_app_resumes_the_job(
    url: str, deploy_app: Callable[..., str], db_path: Path, reference: list[dict[str, Any]]
) -> None:
    job = submit(url, TEXTS)
    wait_for_chunks(url, job["id"], 3)
    serve.delete(APP)

    before = recorded_chunks(db_path, job["id"])
    total_chunks = N_TEXTS // CHUNK_TEXTS
    assert 3 <= len(before) < total_chunks

    assert deploy_app(APP, **app_args(db_path)) == url
    final = wait_until_done(url, job["id"], timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert final["progress"]["completed_texts"] == N_TEXTS
    after = recorded_chunks(db_path, job["id"])
    assert sorted(after) == list(range(total_chunks))  # none lost
    assert {i: after[i] for i in before} == before  # recorded chunks were not redone
    assert_same_results(all_results(url, job["id"]), reference)


def test_a_failed_job_sends_a_signed_job_failed_event(
    url: str,
    db_path: Path,
    deploy_app: Callable[..., str],
    receiver: Receiver,
    tiny_model_dir: Path,
) -> None:
    """An operator shrinks the model's window (max_length) under a running job: the labels it
    was accepted with no longer fit, every later chunk is refused (not transient), so the job
    fails, keeps what it finished, and says so in a signed job.failed event. Last in the
    module: the app keeps the smaller window."""
    label = fitting_label(AutoTokenizer.from_pretrained(str(tiny_model_dir)), 30, 50)
    # From the slow client's address: its bucket paces the job (two chunks a second), so the job
    # is still running when the app comes back.
    transport = httpx.HTTPTransport(local_address=SLOW_CLIENT)
    with httpx.Client(transport=transport, timeout=60) as client:
        body = {"texts": TEXTS, "labels": ["sports", label], "callback_url": receiver.url}
        answer = client.post(f"{url}/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    wait_for_chunks(url, job["id"], 1)
    serve.delete(APP)
    # The same store, a window of 24 tokens: the label's hypothesis alone no longer fits.
    assert deploy_app(APP, max_length=24, **app_args(db_path)) == url

    payload = delivered_event(url, job["id"], receiver)
    final = get_job(url, job["id"])
    assert final["state"] == "failed" and final["finished_at"] is not None
    assert final["error"]["type"] == "classifier_error"
    assert "does not fit the model's window of 24 tokens" in final["error"]["message"], final
    assert 0 < final["progress"]["completed_chunks"] < final["progress"]["total_chunks"]
    assert payload["type"] == "job.failed"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "failed"
    assert payload["data"]["error"] == final["error"]
    assert payload["data"]["progress"] == final["progress"]
