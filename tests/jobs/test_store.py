"""The job store, on a real SQLite file and a real PostgreSQL server (every test runs on both):
states, exactly-once chunks, leases, paging, outbox, idempotency."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.jobs.opening import open_store
from serve_app.jobs.store import IdempotencyConflict, JobStore, OutboxEvent


def make_request(n: int, labels: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
    return {
        "texts": [f"text {i}" for i in range(n)],
        "labels": list(labels),
        "hypothesis_template": "This example is {}.",
        "multi_label": False,
    }


def fake_results(texts: list[str]) -> list[dict[str, Any]]:
    return [{"sequence": t, "labels": ["a", "b"], "scores": [0.75, 0.25]} for t in texts]


def chunk_results(request: dict[str, Any], size: int, index: int) -> list[dict[str, Any]]:
    return fake_results(request["texts"][index * size : (index + 1) * size])


def event_at(at: float):
    def factory(job: dict[str, Any]) -> OutboxEvent:
        return OutboxEvent(f"job.{job.state}", f'{{"id": "{job.id}"}}'.encode(), at)

    return factory


def claim_all(store: JobStore, runner: str = "r1", now: float | None = None) -> list[int]:
    """Lease every free chunk to `runner`; the chunk indexes, in claim order."""
    out = []
    while (claim := store.claim_chunk(runner, lease_s=60, now=now)) is not None:
        out.append(claim.chunk_index)
    return out


def run_all(store: JobStore, job_id: str, request: dict[str, Any], size: int) -> None:
    for index in claim_all(store):
        assert store.record_chunk(job_id, index, chunk_results(request, size, index))


def test_lifecycle_timestamps_and_progress(store: JobStore) -> None:
    request = make_request(10)
    job, created = store.create_job(request, chunk_texts=4, now=100.0)
    assert created and job.state == "queued" and job.created_at == 100.0
    assert job.progress.model_dump() == {
        "total_texts": 10,
        "completed_texts": 0,
        "total_chunks": 3,
        "completed_chunks": 0,
    }
    assert job.labels == ["a", "b"] and job.started_at is None

    claim = store.claim_chunk("r1", lease_s=60, now=101.0)
    assert claim is not None and claim.chunk_index == 0
    assert claim.request == {**request, "texts": request["texts"][:4]}
    assert claim_all(store, now=101.0) == [1, 2]
    assert store.record_chunk(job.id, 2, chunk_results(request, 4, 2))  # the short last chunk
    view = store.get_job(job.id, None)
    assert view.state == "running" and view.started_at == 101.0
    assert view.progress.completed_texts == 2 and view.progress.completed_chunks == 1

    with pytest.raises(ValueError):  # succeeded needs every chunk
        store.finish_job(job.id, "succeeded")
    for index in (0, 1):
        store.record_chunk(job.id, index, chunk_results(request, 4, index))
    done = store.finish_job(job.id, "succeeded", now=105.0)
    assert done.state == "succeeded" and done.finished_at == 105.0
    assert done.progress.completed_texts == 10


def test_a_chunk_is_recorded_exactly_once(store: JobStore) -> None:
    request = make_request(8)
    job, _ = store.create_job(request, chunk_texts=4)
    assert claim_all(store) == [0, 1]
    assert store.record_chunk(job.id, 1, chunk_results(request, 4, 1))
    # A second run of the chunk (a retry after a lost answer) changes neither count nor results.
    rerun = [{**r, "scores": [0.5, 0.5]} for r in chunk_results(request, 4, 1)]
    assert not store.record_chunk(job.id, 1, rerun)
    progress = store.get_job(job.id, None).progress
    assert (progress.completed_chunks, progress.completed_texts) == (1, 4)
    assert store.results_page(job.id, 1, 8)[4:] == chunk_results(request, 4, 1)
    # Once chunk 0's lease expires, it alone goes back to the pool.
    assert store.claim_chunk("r2", lease_s=60) is None
    assert [c.chunk_index for c in [store.claim_chunk("r2", 60, now=1e12)] if c] == [0]
    with pytest.raises(ValueError):
        store.record_chunk(job.id, 0, fake_results(["only one"]))
    with pytest.raises(IndexError):
        store.record_chunk(job.id, 2, fake_results(["x"]))


def test_restart_resumes_from_the_store(store_url: str) -> None:
    first = open_store(store_url)
    request = make_request(6)
    job, _ = first.create_job(request, chunk_texts=2)
    assert claim_all(first, now=50.0) == [0, 1, 2]
    first.record_chunk(job.id, 0, chunk_results(request, 2, 0))
    first.close()  # the runner dies holding the leases of chunks 1 and 2

    second = open_store(store_url)
    assert second.claim_chunk("r2", lease_s=60, now=60.0) is None  # still leased
    assert claim_all(second, "r2", now=111.0) == [1, 2]  # expired: back in the pool
    assert second.get_job(job.id, None).started_at == 50.0  # resuming keeps started_at
    second.close()


def test_terminal_states_never_change(store: JobStore) -> None:
    request = make_request(4)
    job, _ = store.create_job(request, chunk_texts=2)
    claim_all(store)
    store.record_chunk(job.id, 0, chunk_results(request, 2, 0))
    cancelled = store.cancel_job(job.id, None, now=9.0)
    assert cancelled.state == "cancelled" and cancelled.cancelled_at == 9.0

    # Late chunks are dropped, ending again is refused, cancelling again changes nothing.
    assert not store.record_chunk(job.id, 1, chunk_results(request, 2, 1))
    assert store.finish_job(job.id, "failed", {"type": "x", "message": "y"}) is None
    assert store.cancel_job(job.id, None, now=10.0).cancelled_at == 9.0
    assert store.claim_chunk("r1", lease_s=60, now=1e12) is None
    assert not store.renew_lease(job.id, 1, "r1", 60)
    # Even a direct write is refused by the database itself.
    with pytest.raises(Exception, match="terminal state never changes"):
        with store._tx() as db:
            db.run("UPDATE jobs SET state = 'running' WHERE id = ?", (job.id,))
    # Partial results survive the cancel.
    assert store.results_page(job.id, 1, 10) == chunk_results(request, 2, 0) + [None, None]


def test_failed_job_keeps_its_error(store: JobStore) -> None:
    job, _ = store.create_job(make_request(2), chunk_texts=2)
    claim_all(store)
    failed = store.finish_job(job.id, "failed", {"type": "internal", "message": "boom"})
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error.model_dump() == {"type": "internal", "message": "boom"}


def test_cancel_a_queued_job(store: JobStore) -> None:
    job, _ = store.create_job(make_request(3), chunk_texts=2)
    assert store.cancel_job(job.id, None).state == "cancelled"
    assert store.claim_chunk("r1", lease_s=60) is None
    assert store.results_page(job.id, 1, 10) == [None, None, None]


def test_results_pages_cross_chunk_boundaries(store: JobStore) -> None:
    request = make_request(23)
    job, _ = store.create_job(request, chunk_texts=5)
    run_all(store, job.id, request, 5)
    expected = fake_results(request["texts"])
    pages = [store.results_page(job.id, page, 7) for page in range(1, 5)]
    assert [len(p) for p in pages] == [7, 7, 7, 2]
    assert sum(pages, []) == expected
    assert store.results_page(job.id, 5, 7) == []
    assert store.results_page(job.id, 1, 100) == expected


def test_owners_see_only_their_jobs_newest_first(store: JobStore) -> None:
    ids = [store.create_job(make_request(1), 1, owner="alice")[0].id for _ in range(5)]
    bob = store.create_job(make_request(1), 1, owner="bob")[0].id
    anonymous = store.create_job(make_request(1), 1)[0].id

    page, cursor = store.list_jobs("alice", limit=2)
    assert [j.id for j in page] == ids[::-1][:2] and cursor == ids[3]
    page, cursor = store.list_jobs("alice", limit=2, cursor=cursor)
    assert [j.id for j in page] == [ids[2], ids[1]]
    page, cursor = store.list_jobs("alice", limit=2, cursor=cursor)
    assert [j.id for j in page] == [ids[0]] and cursor is None

    assert [j.id for j in store.list_jobs(None, 10)[0]] == [anonymous]
    assert store.get_job(bob, "alice") is None and store.get_job(bob, None) is None
    assert store.get_job(anonymous, "bob") is None
    assert store.cancel_job(bob, "alice") is None
    assert store.get_job(bob, "bob").state == "queued"
    with pytest.raises(KeyError):
        store.list_jobs("alice", 10, cursor=bob)


def test_idempotency_key_per_owner(store: JobStore) -> None:
    request = make_request(3)
    first, created = store.create_job(request, 2, owner="alice", idempotency_key="k1")
    again, created_again = store.create_job(request, 2, owner="alice", idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    # The same key from another owner (or anonymously) is another job.
    other, created_other = store.create_job(request, 2, owner="bob", idempotency_key="k1")
    anonymous, _ = store.create_job(request, 2, idempotency_key="k1")
    assert created_other and len({first.id, other.id, anonymous.id}) == 3
    assert store.create_job(request, 2, idempotency_key="k1")[0].id == anonymous.id
    with pytest.raises(IdempotencyConflict):
        store.create_job(make_request(4), 2, owner="alice", idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        store.create_job(request, 2, owner="alice", idempotency_key="k1", metadata={"x": 1})


def test_outbox_event_is_queued_with_the_terminal_state(store: JobStore) -> None:
    request = make_request(2)
    silent, _ = store.create_job(request, chunk_texts=2)  # no callback: no event
    run_all(store, silent.id, request, 2)
    assert store.finish_job(silent.id, "succeeded", event=event_at(0.0)).deliveries == []

    job, _ = store.create_job(request, chunk_texts=2, callback_url="http://127.0.0.1:9/hook")
    run_all(store, job.id, request, 2)
    done = store.finish_job(job.id, "succeeded", event=event_at(100.0), now=100.0)
    [delivery] = done.deliveries
    assert delivery.event_type == "job.succeeded" and delivery.state == "pending"
    assert delivery.next_attempt_at == 100.0 and delivery.attempts == []
    assert store.next_delivery_at() == 100.0


def test_an_ended_job_always_has_its_event(store: JobStore) -> None:
    """The terminal state and its outbox row commit together: if the event cannot be built,
    the job has not ended either (and a retry can end it with its event)."""
    request = make_request(2)
    job, _ = store.create_job(request, chunk_texts=2, callback_url="http://127.0.0.1:9/hook")
    run_all(store, job.id, request, 2)

    def broken(_: Any) -> OutboxEvent:
        raise RuntimeError("no event")

    with pytest.raises(RuntimeError):
        store.finish_job(job.id, "succeeded", event=broken)
    view = store.get_job(job.id, None)
    assert view.state == "running" and view.finished_at is None and view.deliveries == []
    with pytest.raises(RuntimeError):
        store.cancel_job(job.id, None, event=broken)
    assert store.get_job(job.id, None).state == "running"

    done = store.finish_job(job.id, "succeeded", event=event_at(5.0))
    assert done.state == "succeeded"
    assert [d.event_type for d in done.deliveries] == ["job.succeeded"]


def test_outbox_schedule_lives_in_the_database(store_url: str) -> None:
    store = open_store(store_url)
    job, _ = store.create_job(make_request(1), 1, callback_url="http://127.0.0.1:9/hook")
    store.cancel_job(job.id, None, event=event_at(100.0), now=100.0)

    assert store.claim_due_deliveries(lease_s=30, limit=10, now=99.0) == []
    [claimed] = store.claim_due_deliveries(lease_s=30, limit=10, now=100.0)
    assert claimed.job_id == job.id and claimed.attempts == 0
    assert claimed.body == f'{{"id": "{job.id}"}}'.encode()
    # Leased while in flight: not claimed twice, but due again if this process dies.
    assert store.claim_due_deliveries(lease_s=30, limit=10, now=101.0) == []
    assert store.next_delivery_at() == 130.0

    state = store.record_attempt(claimed.event_id, False, 503, None, 105.0, now=101.0)
    assert state == "pending"
    store.close()

    store = open_store(store_url)  # the schedule survives a restart
    assert store.next_delivery_at() == 105.0
    [again] = store.claim_due_deliveries(lease_s=30, limit=10, now=105.0)
    assert again.event_id == claimed.event_id and again.attempts == 1
    assert store.record_attempt(again.event_id, True, 204, None, None, now=106.0) == "delivered"
    assert store.next_delivery_at() is None
    # A late duplicate report changes nothing.
    assert store.record_attempt(again.event_id, False, None, "late", 200.0) == "delivered"

    [delivery] = store.get_job(job.id, None).deliveries
    assert delivery.state == "delivered" and delivery.finished_at == 106.0
    assert delivery.next_attempt_at is None
    assert [a.model_dump() for a in delivery.attempts] == [
        {"attempt": 1, "at": 101.0, "status_code": 503, "error": None},
        {"attempt": 2, "at": 106.0, "status_code": 204, "error": None},
    ]
    store.close()


def test_giving_up_marks_the_delivery_failed(store: JobStore) -> None:
    job, _ = store.create_job(make_request(1), 1, callback_url="http://127.0.0.1:9/hook")
    claim_all(store)
    store.finish_job(job.id, "failed", {"type": "x", "message": "y"}, event=event_at(0.0))
    [claimed] = store.claim_due_deliveries(lease_s=30, limit=10, now=1.0)
    state = store.record_attempt(claimed.event_id, False, None, "connection refused", None, now=2.0)
    assert state == "failed"
    assert store.claim_due_deliveries(lease_s=30, limit=10, now=1e12) == []
    [delivery] = store.get_job(job.id, None).deliveries
    assert delivery.state == "failed"
    assert delivery.attempts[0].error == "connection refused"
    assert store.get_job(job.id, None).state == "failed"  # the job itself is untouched
