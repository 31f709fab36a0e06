"""Two JobRunners on one PostgreSQL store, in a real Serve app on the tiny model: one is killed
mid-job (`ray.kill` on its replica actor) and every job still completes, each chunk recorded
once, with the results `/v1/classify` gives. Over HTTP too: another tenant's job answers 404 and
a tenant past its active-job quota gets a 429 envelope."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import ray
from live import SERVE_NAMESPACE, bearer, in_actor, replica_names, wait_for
from parity import assert_same_results
from stores import fresh_store_url

from serve_app.core.keys import hash_key

pytestmark = pytest.mark.ray

APP = "runners"
KEYS = {"alice": "alice-runners-key", "bob": "bob-runners-key"}
LABELS = ["sports", "politics", "technology"]
N_JOBS, N_TEXTS, CHUNK_TEXTS = 3, 240, 8  # 30 chunks a job
LEASE_S = 3.0


def texts_of(job: int) -> list[str]:
    words = "team match vote government phone market bank rain music film doctor storm".split()
    return [
        f"{job}.{i}: " + " ".join(words[(i * 7 + k * job) % len(words)] for k in range(3 + i % 9))
        for i in range(N_TEXTS)
    ]


@pytest.fixture(scope="module")
def store_url(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_store_url("postgres", tmp_path_factory.mktemp("runners"), postgres_server)


@pytest.fixture(scope="module")
def url(deploy_app: Callable[..., str], store_url: str) -> str:
    return deploy_app(
        APP,
        auth={"api_key_hashes": {name: hash_key(key) for name, key in KEYS.items()}},
        jobs={
            "store": store_url,
            "runners": 2,
            "lease_s": LEASE_S,
            "chunk_texts": CHUNK_TEXTS,
            "max_parallel_chunks": 2,
            "max_active_per_tenant": N_JOBS,
        },
    )


def get(url: str, path: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", headers=bearer(KEYS[key]), timeout=60)


def job_view(url: str, job_id: str, **params: Any) -> dict[str, Any] | None:
    # While Serve replaces the killed runner an answer may be a retryable 503: poll on.
    answer = httpx.get(
        f"{url}/v1/jobs/{job_id}", params=params, headers=bearer(KEYS["alice"]), timeout=60
    )
    return answer.json() if answer.status_code == 200 else None


def rows(store_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(store_url) as conn:
        return conn.execute(sql, params).fetchall()


def process_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; its parent has not reaped it yet


def test_a_runner_killed_mid_job_loses_nothing(url: str, store_url: str) -> None:
    jobs = []
    for n in range(N_JOBS):
        answer = httpx.post(
            f"{url}/v1/jobs",
            json={"texts": texts_of(n), "labels": LABELS},
            headers=bearer(KEYS["alice"]),
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json()["id"])

    # Over the quota while the three are active: a 429 envelope that says what to do.
    over = httpx.post(
        f"{url}/v1/jobs",
        json={"texts": ["one more"], "labels": LABELS},
        headers=bearer(KEYS["alice"]),
        timeout=60,
    )
    assert over.status_code == 429, over.text
    assert over.json()["error"]["type"] == "too_many_active_jobs"
    # Another tenant sees none of it: 404 on get and cancel, an empty list.
    assert get(url, f"/v1/jobs/{jobs[0]}", "bob").status_code == 404
    cancel = httpx.post(f"{url}/v1/jobs/{jobs[0]}/cancel", headers=bearer(KEYS["bob"]), timeout=60)
    assert cancel.status_code == 404 and cancel.json()["error"]["type"] == "not_found"
    assert get(url, "/v1/jobs", "bob").json()["data"] == []

    # Kill a runner while it holds a lease on some chunk (it is mid-job).
    runners = {name.rsplit("#", 1)[-1]: name for name in replica_names(APP, "JobRunner")}
    assert len(runners) == 2
    # Their pids first, so that nothing stands between seeing the victim's leases and the kill.
    pids = {
        r: in_actor(name, SERVE_NAMESPACE, lambda _: os.getpid()) for r, name in runners.items()
    }

    # Any runner with a lease once some chunks are done (waiting for both to hold leases at the
    # same instant was a race the jobs could finish before): it, and the leases it holds.
    def a_leasing_runner() -> tuple[str, list[tuple[str, float]]] | None:
        held = rows(
            store_url,
            "SELECT runner_id, job_id || '/' || chunk_index, expires_at FROM leases"
            " WHERE expires_at > 0",  # 0: given back
        )
        done = rows(store_url, "SELECT count(*) FROM chunks WHERE results IS NOT NULL")[0][0]
        leasing = sorted({r for r, _, _ in held} & set(runners))
        if not leasing or done < 4:
            return None
        return leasing[0], [(chunk, expires) for r, chunk, expires in held if r == leasing[0]]

    victim, seen = wait_for(a_leasing_runner, 120, "a runner to hold a lease mid-job", every_s=0.05)
    before = dict(
        rows(
            store_url,
            "SELECT job_id || '/' || chunk_index, recorded_at FROM chunks"
            " WHERE results IS NOT NULL",
        )  # fmt: skip
    )
    ray.kill(ray.get_actor(runners[victim], namespace=SERVE_NAMESPACE), no_restart=True)
    # What it was working on when it died: the leases just seen (any it let go of since, it
    # let go of by recording the chunk, before it died) and those it took since, which stay
    # behind it until they expire. Read at once: waiting for the death first could outlast one.
    orphaned = dict(seen)
    orphaned.update(
        rows(
            store_url,
            "SELECT job_id || '/' || chunk_index, expires_at FROM leases WHERE runner_id = %s",
            victim,
        )
    )
    assert orphaned, "the killed runner held no chunk"
    # ray.kill returns before the process exits (and Ray reports the actor dead before that): in
    # that moment the victim may still record a chunk. Its process gone, it records nothing more.
    pid = pids[victim]
    wait_for(lambda: not process_running(pid), 60, "the killed runner's exit", every_s=0.02)
    dead_at = time.time()

    def all_ended() -> list[dict[str, Any]] | None:
        views = [job_view(url, job_id) for job_id in jobs]
        if all(v is not None and v["state"] in ("succeeded", "failed") for v in views):
            return [v for v in views if v is not None]
        return None

    finals = wait_for(all_ended, 300, "every job to end", every_s=1.0)
    assert [v["state"] for v in finals] == ["succeeded"] * N_JOBS, [v["error"] for v in finals]
    # Each chunk recorded once: one row per chunk with a result, the job's counter equal to the
    # chunk count, and no chunk recorded before the kill written again.
    per_chunk = N_TEXTS // CHUNK_TEXTS
    for view in finals:
        assert view["progress"]["completed_chunks"] == per_chunk
    assert rows(store_url, "SELECT count(*) FROM chunks WHERE results IS NOT NULL")[0][0] == (
        N_JOBS * per_chunk
    )
    after = dict(rows(store_url, "SELECT job_id || '/' || chunk_index, recorded_at FROM chunks"))
    assert {k: after[k] for k in before} == before
    # The dead runner's chunks were finished by the victim in its last moment, or by another
    # runner once their leases had expired: never taken over under a live lease.
    for chunk, expires_at in orphaned.items():
        recorded = after[chunk]
        assert recorded is not None and (recorded <= dead_at or recorded >= expires_at), (
            chunk,
            recorded,
            dead_at,
            expires_at,
        )
    assert rows(store_url, "SELECT count(*) FROM leases")[0][0] == 0

    for n, job_id in enumerate(jobs):
        reference = httpx.post(
            f"{url}/v1/classify",
            json={"texts": texts_of(n), "labels": LABELS},
            headers=bearer(KEYS["alice"]),
            timeout=120,
        )
        assert reference.status_code == 200, reference.text
        view = job_view(url, job_id, page_size=N_TEXTS)
        assert view is not None
        assert_same_results(view["results"], reference.json()["results"])
