"""The job store's logic in SQL that SQLite and PostgreSQL both run.

Statements are written with `?` placeholders; a subclass supplies the connection, the
transaction (`_tx`), the placeholder style and its row-locking clauses: PostgreSQL locks the rows
it claims (`FOR UPDATE SKIP LOCKED`, so runners never wait on each other's claims), SQLite takes
the whole database's write lock at BEGIN IMMEDIATE, which serializes every claim the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

from serve_app.jobs.models import (
    DeliveryAttempt,
    DeliveryState,
    Job,
    JobError,
    JobProgress,
    WebhookDelivery,
    echoed_options,
)
from serve_app.jobs.store import (
    TERMINAL_STATES,
    ChunkClaim,
    Delivery,
    EventFactory,
    IdempotencyConflict,
    StoreBoundExceeded,
    TooManyActiveJobs,
    estimated_bytes,
    new_event_id,
    new_job_id,
    request_hash,
    tenant_of,
)

_TERMINAL_SQL = "('succeeded', 'failed', 'cancelled')"


class Db:
    """One transaction's statements; rows come back as dicts."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._cursor.execute(self._sql(sql), tuple(params))
        return [dict(row) for row in self._cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(self._sql(sql), tuple(params))
        count: int = self._cursor.rowcount
        return count

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), [tuple(r) for r in rows])


class SqlJobStore:
    url: str
    # FOR UPDATE clauses: empty on SQLite, where BEGIN IMMEDIATE already holds the write lock.
    _lock_row = ""  # lock the selected row until the transaction ends
    _skip_locked = ""  # ... and skip rows another transaction holds

    def _tx(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---- submission -------------------------------------------------------------------------

    def create_job(
        self,
        request: dict[str, Any],
        chunk_texts: int,
        owner: str | None = None,
        rate_key: str | None = None,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        now: float | None = None,
        max_active: int | None = None,
        max_store_bytes: int | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; returns (job view, created). A replayed Idempotency-Key returns the
        existing job with created=False; the same key with a different request raises
        IdempotencyConflict. Raises TooManyActiveJobs / StoreBoundExceeded over the limits."""
        tenant = tenant_of(owner)
        texts: list[str] = request["texts"]
        total = len(texts)
        digest = request_hash(request, callback_url, metadata)
        size = estimated_bytes(request)
        with self._tx() as db:
            # One submission per tenant at a time (on PostgreSQL): the quota check and the insert
            # are one step, however many ingress replicas submit at once.
            db.run(
                "INSERT INTO tenants (tenant, last_turn) VALUES (?, 0) ON CONFLICT DO NOTHING",
                (tenant,),
            )
            db.one("SELECT tenant FROM tenants WHERE tenant = ?" + self._lock_row, (tenant,))
            if idempotency_key is not None:
                row = db.one(
                    "SELECT id, request_hash FROM jobs WHERE tenant = ? AND idempotency_key = ?",
                    (tenant, idempotency_key),
                )
                if row is not None:
                    if row["request_hash"] != digest:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was already used for job "
                            f"{row['id']} with a different request"
                        )
                    return self._view(db, row["id"]), False
            if max_active is not None:
                active = self._count(
                    db,
                    "SELECT count(*) AS n FROM jobs WHERE tenant = ?"
                    " AND state IN ('queued', 'running')",
                    (tenant,),
                )
                if active >= max_active:
                    raise TooManyActiveJobs(active, max_active)
            if max_store_bytes is not None:
                stored = self._count(db, "SELECT coalesce(sum(stored_bytes), 0) AS n FROM jobs")
                if stored + size > max_store_bytes:
                    raise StoreBoundExceeded(stored, size, max_store_bytes)
            job_id = new_job_id()
            meta = {k: v for k, v in request.items() if k != "texts"}
            chunks = -(-total // chunk_texts)
            db.run(
                "INSERT INTO jobs (id, owner, tenant, rate_key, state, created_at, request,"
                " request_hash, callback_url, metadata, idempotency_key, chunk_texts, total_texts,"
                " total_chunks, stored_bytes) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?)",
                (
                    job_id,
                    owner,
                    tenant,
                    rate_key,
                    _now(now),
                    json.dumps(meta),
                    digest,
                    callback_url,
                    None if metadata is None else json.dumps(metadata),
                    idempotency_key,
                    chunk_texts,
                    total,
                    chunks,
                    size,
                ),
            )
            db.many(
                "INSERT INTO chunks (job_id, chunk_index, texts) VALUES (?, ?, ?)",
                [
                    (job_id, i, json.dumps(texts[i * chunk_texts : (i + 1) * chunk_texts]))
                    for i in range(chunks)
                ],
            )
            return self._view(db, job_id), True

    # ---- reading (always scoped to the tenant) ----------------------------------------------

    def get_job(self, job_id: str, owner: str | None) -> Job | None:
        """The job's view, or None if it does not exist or belongs to another tenant."""
        with self._tx() as db:
            row = db.one(
                "SELECT id FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant_of(owner))
            )
            return None if row is None else self._view(db, job_id)

    def expired_at(self, job_id: str, owner: str | None) -> float | None:
        """When the tenant's job `job_id` expired (None if it never existed or is not theirs)."""
        with self._tx() as db:
            row = db.one(
                "SELECT expired_at FROM expired WHERE id = ? AND tenant = ?",
                (job_id, tenant_of(owner)),
            )
        return None if row is None else float(row["expired_at"])

    def list_jobs(
        self, owner: str | None, limit: int, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """The tenant's jobs, newest first, after `cursor` (a job id from the previous page).
        Returns (jobs, next cursor or None). Raises KeyError for a cursor that is not theirs."""
        tenant = tenant_of(owner)
        with self._tx() as db:
            before = None
            if cursor is not None:
                row = db.one("SELECT seq FROM jobs WHERE id = ? AND tenant = ?", (cursor, tenant))
                if row is None:
                    raise KeyError(cursor)
                before = row["seq"]
            if before is None:
                rows = db.all(
                    "SELECT id FROM jobs WHERE tenant = ? ORDER BY seq DESC LIMIT ?",
                    (tenant, limit + 1),
                )
            else:
                rows = db.all(
                    "SELECT id FROM jobs WHERE tenant = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (tenant, before, limit + 1),
                )
            jobs = [self._view(db, row["id"]) for row in rows[:limit]]
        return jobs, (jobs[-1].id if len(rows) > limit else None)

    def results_page(self, job_id: str, page: int, page_size: int) -> list[dict[str, Any] | None]:
        """Results of texts [(page-1)*page_size, page*page_size), in text order; None marks a
        text whose chunk never ran (the job was cancelled or failed first)."""
        with self._tx() as db:
            job = db.one("SELECT chunk_texts, total_texts FROM jobs WHERE id = ?", (job_id,))
            if job is None:
                raise KeyError(job_id)
            size, total = job["chunk_texts"], job["total_texts"]
            start = (page - 1) * page_size
            end = min(start + page_size, total)
            if start >= end:
                return []
            out: list[dict[str, Any] | None] = [None] * (end - start)
            rows = db.all(
                "SELECT chunk_index, results FROM chunks WHERE job_id = ?"
                " AND chunk_index BETWEEN ? AND ? AND results IS NOT NULL",
                (job_id, start // size, (end - 1) // size),
            )
        for row in rows:
            first = row["chunk_index"] * size
            for offset, result in enumerate(json.loads(row["results"])):
                if start <= first + offset < end:
                    out[first + offset - start] = result
        return out

    def stored_bytes(self) -> int:
        with self._tx() as db:
            return self._count(db, "SELECT coalesce(sum(stored_bytes), 0) AS n FROM jobs")

    # ---- running: leases --------------------------------------------------------------------

    def claim_chunk(
        self, runner_id: str, lease_s: float, now: float | None = None
    ) -> ChunkClaim | None:
        """Lease one chunk to `runner_id` for `lease_s`, from the tenant served longest ago
        (its oldest job with work left): a chunk whose lease expired first, else the next one
        never handed out. None when no chunk is free."""
        at = _now(now)
        with self._tx() as db:
            job = db.one(
                "SELECT j.id, j.tenant, j.state, j.rate_key, j.request, j.next_chunk,"
                " j.total_chunks FROM jobs j LEFT JOIN tenants t ON t.tenant = j.tenant"
                " WHERE j.state IN ('queued', 'running') AND (j.next_chunk < j.total_chunks"
                "  OR EXISTS (SELECT 1 FROM leases l WHERE l.job_id = j.id AND l.expires_at <= ?))"
                " ORDER BY coalesce(t.last_turn, 0), j.seq LIMIT 1" + self._skip_locked,
                (at,),
            )
            if job is None:
                return None
            job_id = job["id"]
            expired = db.one(
                "SELECT chunk_index FROM leases WHERE job_id = ? AND expires_at <= ?"
                " ORDER BY chunk_index LIMIT 1",
                (job_id, at),
            )
            if expired is not None:
                index = expired["chunk_index"]
                db.run(
                    "UPDATE leases SET runner_id = ?, expires_at = ?"
                    " WHERE job_id = ? AND chunk_index = ?",
                    (runner_id, at + lease_s, job_id, index),
                )
            else:
                index = job["next_chunk"]
                db.run(
                    "INSERT INTO leases (job_id, chunk_index, runner_id, expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (job_id, index, runner_id, at + lease_s),
                )
            if job["state"] == "queued":
                db.run(
                    "UPDATE jobs SET state = 'running', started_at = ?, next_chunk = ?"
                    " WHERE id = ?",
                    (at, max(job["next_chunk"], index + 1), job_id),
                )
            elif expired is None:
                db.run("UPDATE jobs SET next_chunk = ? WHERE id = ?", (index + 1, job_id))
            db.run(
                "UPDATE tenants SET last_turn = (SELECT max(last_turn) + 1 FROM tenants)"
                " WHERE tenant = ?",
                (job["tenant"],),
            )
            chunk = db.one(
                "SELECT texts FROM chunks WHERE job_id = ? AND chunk_index = ?", (job_id, index)
            )
        assert chunk is not None
        request = json.loads(job["request"])
        request["texts"] = json.loads(chunk["texts"])
        return ChunkClaim(
            job_id=job_id,
            chunk_index=index,
            tenant=job["tenant"],
            rate_key=job["rate_key"],
            request=request,
            expires_at=at + lease_s,
        )

    def renew_lease(
        self,
        job_id: str,
        chunk_index: int,
        runner_id: str,
        lease_s: float,
        now: float | None = None,
    ) -> bool:
        """Extend a lease this runner still holds on a running job; False means stop: the job
        ended (cancelled, failed) or the lease expired and went to another runner."""
        with self._tx() as db:
            renewed = db.run(
                "UPDATE leases SET expires_at = ? WHERE job_id = ? AND chunk_index = ?"
                " AND runner_id = ? AND EXISTS (SELECT 1 FROM jobs WHERE id = ?"
                " AND state = 'running')",
                (_now(now) + lease_s, job_id, chunk_index, runner_id, job_id),
            )
        return renewed > 0

    def release_lease(self, job_id: str, chunk_index: int, runner_id: str) -> None:
        """Give a chunk back to the pool now (this runner stops without its result)."""
        with self._tx() as db:
            db.run(
                "UPDATE leases SET expires_at = 0 WHERE job_id = ? AND chunk_index = ?"
                " AND runner_id = ?",
                (job_id, chunk_index, runner_id),
            )

    def record_chunk(
        self, job_id: str, chunk_index: int, results: list[dict[str, Any]], now: float | None = None
    ) -> bool:
        """Record one chunk's results; False (and nothing written) if it was already recorded or
        the job is no longer running, so a late or repeated chunk never counts twice."""
        with self._tx() as db:
            job = db.one(
                "SELECT state, chunk_texts, total_texts, total_chunks FROM jobs WHERE id = ?"
                + self._lock_row,
                (job_id,),
            )
            if job is None:
                raise KeyError(job_id)
            if job["state"] != "running":
                return False
            if not 0 <= chunk_index < job["total_chunks"]:
                raise IndexError(f"chunk {chunk_index} of a job with {job['total_chunks']} chunks")
            size = job["chunk_texts"]
            expected = min(size, job["total_texts"] - chunk_index * size)
            if len(results) != expected:
                raise ValueError(
                    f"chunk {chunk_index} needs {expected} results, got {len(results)}"
                )
            written = db.run(
                "UPDATE chunks SET results = ?, recorded_at = ?"
                " WHERE job_id = ? AND chunk_index = ? AND results IS NULL",
                (json.dumps(results), _now(now), job_id, chunk_index),
            )
            if written:
                db.run(
                    "UPDATE jobs SET completed_chunks = completed_chunks + 1,"
                    " completed_texts = completed_texts + ? WHERE id = ?",
                    (expected, job_id),
                )
                db.run(
                    "DELETE FROM leases WHERE job_id = ? AND chunk_index = ?",
                    (job_id, chunk_index),
                )
            return bool(written)

    def completable_job_ids(self, limit: int = 100) -> list[str]:
        """Running jobs whose every chunk is recorded (the runner that recorded the last one
        ends them; this finds those whose runner died in between)."""
        with self._tx() as db:
            rows = db.all(
                "SELECT id FROM jobs WHERE state = 'running' AND completed_chunks = total_chunks"
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
        return [row["id"] for row in rows]

    def finish_job(
        self,
        job_id: str,
        state: Literal["succeeded", "failed"],
        error: dict[str, str] | None = None,
        event: EventFactory | None = None,
        now: float | None = None,
    ) -> Job | None:
        """End a running job; with a callback URL, queue its webhook event in the same
        transaction (so an ended job always has its event). None if it had already ended."""
        with self._tx() as db:
            row = db.one(
                "SELECT state, completed_chunks, total_chunks FROM jobs WHERE id = ?"
                + self._lock_row,
                (job_id,),
            )
            if row is None:
                raise KeyError(job_id)
            if row["state"] in TERMINAL_STATES:
                return None
            if state == "succeeded" and row["completed_chunks"] != row["total_chunks"]:
                raise ValueError(
                    f"job {job_id} has {row['completed_chunks']} of {row['total_chunks']} chunks"
                )
            db.run(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                (state, _now(now), None if error is None else json.dumps(error), job_id),
            )
            db.run("DELETE FROM leases WHERE job_id = ?", (job_id,))
            return self._queue_event(db, job_id, event, now)

    def cancel_job(
        self,
        job_id: str,
        owner: str | None,
        event: EventFactory | None = None,
        now: float | None = None,
    ) -> Job | None:
        """Cancel the tenant's queued or running job (recorded chunks stay); a terminal job is
        returned unchanged. None if there is no such job for this tenant."""
        with self._tx() as db:
            row = db.one(
                "SELECT state FROM jobs WHERE id = ? AND tenant = ?" + self._lock_row,
                (job_id, tenant_of(owner)),
            )
            if row is None:
                return None
            if row["state"] in TERMINAL_STATES:
                return self._view(db, job_id)
            db.run(
                "UPDATE jobs SET state = 'cancelled', cancelled_at = ? WHERE id = ?",
                (_now(now), job_id),
            )
            db.run("DELETE FROM leases WHERE job_id = ?", (job_id,))
            return self._queue_event(db, job_id, event, now)

    def _queue_event(
        self, db: Db, job_id: str, event: EventFactory | None, now: float | None
    ) -> Job:
        view = self._view(db, job_id)
        if event is None or view.callback_url is None:
            return view
        spec = event(view)
        db.run(
            "INSERT INTO outbox (event_id, job_id, event_type, url, body, state, created_at,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (
                new_event_id(),
                job_id,
                spec.event_type,
                view.callback_url,
                spec.body,
                _now(now),
                spec.first_attempt_at,
            ),
        )
        return self._view(db, job_id)

    # ---- expiry -----------------------------------------------------------------------------

    def expire_jobs(self, ttl_s: float, limit: int, now: float | None = None) -> int:
        """Delete up to `limit` jobs that ended more than `ttl_s` ago (with their chunks and
        webhook rows), leaving a tombstone so a fetch can say the job expired. A job whose
        webhook is still being retried waits for it. Returns how many were deleted."""
        at = _now(now)
        with self._tx() as db:
            rows = db.all(
                "SELECT j.id, j.tenant FROM jobs j WHERE j.state IN " + _TERMINAL_SQL + " AND"
                " coalesce(j.finished_at, j.cancelled_at) < ? AND NOT EXISTS (SELECT 1 FROM"
                " outbox o WHERE o.job_id = j.id AND o.state = 'pending')"
                " ORDER BY coalesce(j.finished_at, j.cancelled_at) LIMIT ?" + self._skip_locked,
                (at - ttl_s, limit),
            )
            for row in rows:
                job_id = row["id"]
                db.run(
                    "DELETE FROM attempts WHERE event_id IN"
                    " (SELECT event_id FROM outbox WHERE job_id = ?)",
                    (job_id,),
                )
                for table in ("outbox", "chunks", "leases"):
                    db.run(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
                db.run("DELETE FROM jobs WHERE id = ?", (job_id,))
                db.run(
                    "INSERT INTO expired (id, tenant, expired_at) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (job_id, row["tenant"], at),
                )
            # A tombstone outlives its job by one more TTL; after that the id is just unknown.
            db.run("DELETE FROM expired WHERE expired_at < ?", (at - ttl_s,))
        return len(rows)

    # ---- webhook outbox ---------------------------------------------------------------------

    def claim_due_deliveries(
        self, lease_s: float, limit: int, now: float | None = None
    ) -> list[Delivery]:
        """Pending events whose next attempt is due, oldest first. Each is leased: its
        next_attempt_at moves `lease_s` ahead, so no runner claims it twice while in flight,
        and it is attempted again if this process dies before recording the attempt."""
        at = _now(now)
        if limit <= 0:
            return []
        with self._tx() as db:
            rows = db.all(
                "SELECT o.event_id, o.job_id, o.url, o.body, o.attempts, j.tenant FROM outbox o"
                " JOIN jobs j ON j.id = o.job_id"
                " WHERE o.state = 'pending' AND o.next_attempt_at <= ?"
                " ORDER BY o.next_attempt_at LIMIT ?" + self._skip_locked.replace("OF j", "OF o"),
                (at, limit),
            )
            db.many(
                "UPDATE outbox SET next_attempt_at = ? WHERE event_id = ?",
                [(at + lease_s, row["event_id"]) for row in rows],
            )
        return [
            Delivery(
                row["event_id"],
                row["job_id"],
                row["url"],
                bytes(row["body"]),
                row["attempts"],
                row["tenant"],
            )
            for row in rows
        ]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending event is due (None if none is pending)."""
        with self._tx() as db:
            row = db.one("SELECT min(next_attempt_at) AS due FROM outbox WHERE state = 'pending'")
        return None if row is None or row["due"] is None else float(row["due"])

    def record_attempt(
        self,
        event_id: str,
        delivered: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: float | None,
        now: float | None = None,
    ) -> DeliveryState:
        """Record one delivery attempt. Not delivered and no next attempt = given up (failed)."""
        at = _now(now)
        state: DeliveryState = (
            "delivered" if delivered else ("pending" if next_attempt_at is not None else "failed")
        )
        with self._tx() as db:
            row = db.one(
                "SELECT attempts, state FROM outbox WHERE event_id = ?" + self._lock_row,
                (event_id,),
            )
            if row is None:
                raise KeyError(event_id)
            if row["state"] != "pending":
                recorded: DeliveryState = row["state"]
                return recorded
            attempt = row["attempts"] + 1
            db.run(
                "INSERT INTO attempts (event_id, attempt, at, status_code, error)"
                " VALUES (?, ?, ?, ?, ?)",
                (event_id, attempt, at, status_code, error),
            )
            db.run(
                "UPDATE outbox SET attempts = ?, state = ?, next_attempt_at = ?, finished_at = ?"
                " WHERE event_id = ?",
                (
                    attempt,
                    state,
                    next_attempt_at if state == "pending" else None,
                    None if state == "pending" else at,
                    event_id,
                ),
            )
        return state

    # ---- views ------------------------------------------------------------------------------

    @staticmethod
    def _count(db: Db, sql: str, params: Sequence[Any] = ()) -> int:
        row = db.one(sql, params)
        return 0 if row is None else int(row["n"])

    def _view(self, db: Db, job_id: str) -> Job:
        row = db.one(
            "SELECT id, state, created_at, started_at, finished_at, cancelled_at, callback_url,"
            " metadata, total_texts, completed_texts, total_chunks, completed_chunks, error,"
            " request FROM jobs WHERE id = ?",
            (job_id,),
        )
        if row is None:
            raise KeyError(job_id)
        request = json.loads(row["request"])
        return Job(
            id=row["id"],
            state=row["state"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            cancelled_at=row["cancelled_at"],
            labels=request["labels"],
            hypothesis_template=request["hypothesis_template"],
            multi_label=bool(request["multi_label"]),
            prefilter_top_k=request.get("top_k"),
            **echoed_options(request),
            progress=JobProgress(
                total_texts=row["total_texts"],
                completed_texts=row["completed_texts"],
                total_chunks=row["total_chunks"],
                completed_chunks=row["completed_chunks"],
            ),
            callback_url=row["callback_url"],
            metadata=None if row["metadata"] is None else json.loads(row["metadata"]),
            error=None if row["error"] is None else JobError(**json.loads(row["error"])),
            deliveries=list(self._deliveries(db, job_id)),
        )

    def _deliveries(self, db: Db, job_id: str) -> Iterator[WebhookDelivery]:
        events = db.all(
            "SELECT event_id, event_type, url, state, next_attempt_at, created_at, finished_at"
            " FROM outbox WHERE job_id = ? ORDER BY created_at",
            (job_id,),
        )
        for event in events:
            attempts = db.all(
                "SELECT attempt, at, status_code, error FROM attempts"
                " WHERE event_id = ? ORDER BY attempt",
                (event["event_id"],),
            )
            yield WebhookDelivery(
                **event, attempts=[DeliveryAttempt(**attempt) for attempt in attempts]
            )


def _now(now: float | None) -> float:
    return time.time() if now is None else now
