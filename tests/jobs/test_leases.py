"""Leases between runners, on both stores: two store handles on one database stand for two
runners (two processes, or two clusters during an upgrade), claiming at the same time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stores import STORE_KINDS, fresh_store_url

from serve_app.jobs.opening import open_store
from serve_app.jobs.store import JobStore, OutboxEvent


@pytest.fixture(params=STORE_KINDS)
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[JobStore, JobStore]]:
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else ""
    url = fresh_store_url(request.param, tmp_path, server)
    a, b = open_store(url), open_store(url)
    yield a, b
    a.close()
    b.close()


def request_of(n: int) -> dict[str, Any]:
    return {
        "texts": [f"t{i}" for i in range(n)],
        "labels": ["a", "b"],
        "hypothesis_template": "{}",
        "multi_label": False,
    }


def test_runners_claiming_at_once_never_share_a_chunk(two: tuple[JobStore, JobStore]) -> None:
    a, b = two
    jobs = [a.create_job(request_of(40), 2, owner=f"tenant{n % 3}")[0].id for n in range(6)]
    claimed: dict[str, list[tuple[str, int]]] = {"r1": [], "r2": []}
    start = threading.Barrier(2)

    def claim_all(store: JobStore, runner: str) -> None:
        start.wait()
        while (claim := store.claim_chunk(runner, lease_s=60)) is not None:
            claimed[runner].append((claim.job_id, claim.chunk_index))
            # A runner works on what it claimed before it claims again: the other one gets its
            # turns (without it one thread could take every chunk before the other starts).
            time.sleep(0.002)

    threads = [
        threading.Thread(target=claim_all, args=(store, runner))
        for store, runner in ((a, "r1"), (b, "r2"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = claimed["r1"] + claimed["r2"]
    assert sorted(everything) == sorted((j, i) for j in jobs for i in range(20))  # each once
    assert claimed["r1"] and claimed["r2"]


def test_a_lost_lease_goes_to_the_other_runner_and_stops_the_first(
    two: tuple[JobStore, JobStore],
) -> None:
    a, b = two
    job, _ = a.create_job(request_of(2), 2)
    first = a.claim_chunk("r1", lease_s=10, now=100.0)
    assert first is not None and b.claim_chunk("r2", lease_s=10, now=105.0) is None
    assert a.renew_lease(job.id, 0, "r1", lease_s=10, now=105.0)  # now held until 115
    assert not b.renew_lease(job.id, 0, "r2", lease_s=10, now=105.0)  # not r2's to renew
    assert b.claim_chunk("r2", lease_s=10, now=114.0) is None
    second = b.claim_chunk("r2", lease_s=10, now=116.0)  # r1 stopped renewing: expired
    assert second is not None and second.chunk_index == 0
    assert not a.renew_lease(job.id, 0, "r1", lease_s=10, now=117.0)  # r1 learns it lost it
    # Both may finish the chunk; its result is written once.
    results = [{"sequence": "t0", "labels": ["a", "b"], "scores": [0.6, 0.4]}] * 2
    assert b.record_chunk(job.id, 0, results)
    assert not a.record_chunk(job.id, 0, [{**r, "scores": [0.1, 0.9]} for r in results])
    assert a.results_page(job.id, 1, 10) == results
    assert a.completable_job_ids() == [job.id]


def test_an_event_is_in_flight_on_one_runner_at_a_time(two: tuple[JobStore, JobStore]) -> None:
    a, b = two
    job, _ = a.create_job(request_of(1), 1, owner="alice", callback_url="http://127.0.0.1:9/h")
    a.cancel_job(job.id, "alice", event=lambda j: OutboxEvent("job.cancelled", b"{}", 0.0), now=1.0)
    got: list[Any] = []
    barrier = threading.Barrier(2)

    def claim(store: JobStore) -> None:
        barrier.wait()
        got.extend(store.claim_due_deliveries(lease_s=30, limit=10, now=10.0))

    threads = [threading.Thread(target=claim, args=(store,)) for store in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(got) == 1 and got[0].tenant == "alice"
    # Its lease runs out if that runner dies before recording the attempt: then it is due again.
    [again] = b.claim_due_deliveries(lease_s=30, limit=10, now=41.0)
    assert again.event_id == got[0].event_id
