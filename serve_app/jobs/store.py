"""The job store: jobs, their chunk results and a webhook outbox in one embedded SQLite file.

Everything a job needs to survive a restart of the whole app lives here, never only in memory:
the prepared request, which chunks are done (keyed `(job_id, chunk_index)`, so a chunk is
recorded exactly once however often it runs), and each webhook event with its attempts and the
time of its next attempt (the retry schedule is an outbox row, not a timer).

Rules the schema itself enforces, so no caller can break them:
- terminal states (`succeeded`, `failed`, `cancelled`) never change (a trigger aborts the update);
- a chunk is recorded once, and only while its job is `running`;
- an idempotency key names one job per owner.

A plain class with no Ray in it. It is not thread-safe: one `JobStore` per process, used from one
thread (the job runner's event loop). WAL mode lets other processes read the file meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serve_app.jobs.models import (
    ECHOED_OPTIONS,
    DeliveryAttempt,
    DeliveryState,
    Job,
    JobError,
    JobProgress,
    JobState,
    WebhookDelivery,
    echoed_options,
)

ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: newest first, list cursors
    id TEXT NOT NULL UNIQUE,
    owner TEXT,                             -- API key name; NULL for anonymous callers
    rate_key TEXT,                          -- whose rate-limit bucket the job's chunks draw on
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    cancelled_at REAL,
    request TEXT NOT NULL,                  -- JSON: texts, labels, hypothesis_template, multi_label
    request_hash TEXT NOT NULL,             -- tells a replayed Idempotency-Key from a reused one
    callback_url TEXT,
    metadata TEXT,
    idempotency_key TEXT,
    chunk_texts INTEGER NOT NULL,           -- fixed per job, so chunk keys survive config changes
    total_texts INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    completed_texts INTEGER NOT NULL DEFAULT 0,
    completed_chunks INTEGER NOT NULL DEFAULT 0,
    error TEXT                              -- JSON {type, message}
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (ifnull(owner, ''), idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (seq) WHERE state IN ('queued', 'running');
CREATE TRIGGER IF NOT EXISTS jobs_terminal_is_final
    BEFORE UPDATE ON jobs WHEN OLD.state IN ('succeeded', 'failed', 'cancelled')
    BEGIN SELECT RAISE(ABORT, 'a job in a terminal state never changes'); END;

CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    chunk_index INTEGER NOT NULL,
    results TEXT NOT NULL,                  -- JSON list, one result per text of the chunk
    recorded_at REAL NOT NULL,
    PRIMARY KEY (job_id, chunk_index)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,              -- the webhook-id: the same on every attempt
    job_id TEXT NOT NULL REFERENCES jobs (id),
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,                     -- serialized once: every attempt signs the same bytes
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,                   -- NULL once delivered or given up
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);

CREATE TABLE IF NOT EXISTS attempts (
    event_id TEXT NOT NULL REFERENCES outbox (event_id),
    attempt INTEGER NOT NULL,               -- 1 for the first attempt
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    PRIMARY KEY (event_id, attempt)
) WITHOUT ROWID;
"""


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request."""


@dataclass(frozen=True)
class JobWork:
    """What the runner needs to (re)start a job: its request and the chunks still to do."""

    job_id: str
    rate_key: str | None
    request: dict[str, Any]
    chunk_texts: int
    missing_chunks: list[int]


@dataclass(frozen=True)
class OutboxEvent:
    """A webhook event to queue atomically with a job's terminal state."""

    event_type: str
    body: bytes
    first_attempt_at: float


@dataclass(frozen=True)
class Delivery:
    """A due outbox row, claimed for one attempt."""

    event_id: str
    job_id: str
    url: str
    body: bytes
    attempts: int  # attempts made before this one


# Builds the job's webhook event from its final view; called inside the terminal transaction.
EventFactory = Callable[[Job], OutboxEvent]


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def request_hash(request: dict[str, Any], callback_url: str | None, metadata: Any) -> str:
    canonical = json.dumps(
        {"request": request, "callback_url": callback_url, "metadata": metadata},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (`_tx`), so none stays open by accident.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the process (what a Serve restart is); only a
        # power loss can drop the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._create_schema()

    def _create_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has job store schema {version}, newer than this code's "
                f"{_SCHEMA_VERSION}; upgrade zsc or point jobs.db_path elsewhere"
            )
        # executescript commits on its own, so it runs outside `_tx`; every statement is idempotent.
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a read-then-write never fails half way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
    ) -> tuple[Job, bool]:
        """Queue a job; returns (job view, created). A replayed Idempotency-Key returns the
        existing job with created=False; the same key with a different request raises
        IdempotencyConflict."""
        total = len(request["texts"])
        digest = request_hash(request, callback_url, metadata)
        with self._tx() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT id, request_hash FROM jobs WHERE owner IS ? AND idempotency_key = ?",
                    (owner, idempotency_key),
                ).fetchone()
                if row is not None:
                    if row["request_hash"] != digest:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was already used for job "
                            f"{row['id']} with a different request"
                        )
                    return self._view(row["id"]), False
            job_id = new_job_id()
            db.execute(
                "INSERT INTO jobs (id, owner, rate_key, state, created_at, request, request_hash,"
                " callback_url, metadata, idempotency_key, chunk_texts, total_texts, total_chunks)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    owner,
                    rate_key,
                    _now(now),
                    json.dumps(request),
                    digest,
                    callback_url,
                    None if metadata is None else json.dumps(metadata),
                    idempotency_key,
                    chunk_texts,
                    total,
                    -(-total // chunk_texts),
                ),
            )
            return self._view(job_id), True

    # ---- reading (always scoped to the owner) -----------------------------------------------

    def get_job(self, job_id: str, owner: str | None) -> Job | None:
        """The job's view, or None if it does not exist or belongs to someone else."""
        row = self._db.execute(
            "SELECT id FROM jobs WHERE id = ? AND owner IS ?", (job_id, owner)
        ).fetchone()
        return None if row is None else self._view(job_id)

    def list_jobs(
        self, owner: str | None, limit: int, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first, after `cursor` (a job id from the previous page).
        Returns (jobs, next cursor or None). Raises KeyError for a cursor that is not theirs."""
        before = None
        if cursor is not None:
            row = self._db.execute(
                "SELECT seq FROM jobs WHERE id = ? AND owner IS ?", (cursor, owner)
            ).fetchone()
            if row is None:
                raise KeyError(cursor)
            before = row["seq"]
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE owner IS ? AND (? IS NULL OR seq < ?)"
            " ORDER BY seq DESC LIMIT ?",
            (owner, before, before, limit + 1),
        ).fetchall()
        jobs = [self._view(row["id"]) for row in rows[:limit]]
        return jobs, (jobs[-1].id if len(rows) > limit else None)

    def results_page(self, job_id: str, page: int, page_size: int) -> list[dict[str, Any] | None]:
        """Results of texts [(page-1)*page_size, page*page_size), in text order; None marks a
        text whose chunk never ran (the job was cancelled or failed first)."""
        job = self._db.execute(
            "SELECT chunk_texts, total_texts FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if job is None:
            raise KeyError(job_id)
        size, total = job["chunk_texts"], job["total_texts"]
        start = (page - 1) * page_size
        end = min(start + page_size, total)
        if start >= end:
            return []
        out: list[dict[str, Any] | None] = [None] * (end - start)
        rows = self._db.execute(
            "SELECT chunk_index, results FROM chunks"
            " WHERE job_id = ? AND chunk_index BETWEEN ? AND ?",
            (job_id, start // size, (end - 1) // size),
        )
        for row in rows:
            first = row["chunk_index"] * size
            for offset, result in enumerate(json.loads(row["results"])):
                if start <= first + offset < end:
                    out[first + offset - start] = result
        return out

    # ---- running ----------------------------------------------------------------------------

    def active_job_ids(self) -> list[str]:
        """Queued and running jobs, oldest first (running ones are resumed after a restart)."""
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq"
        ).fetchall()
        return [row["id"] for row in rows]

    def start_job(self, job_id: str, now: float | None = None) -> JobWork | None:
        """Move a queued job to running (a running one stays, keeping its started_at) and return
        the work left; None if the job is already terminal."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state, rate_key, request, chunk_texts, total_chunks FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                raise KeyError(job_id)
            if row["state"] in TERMINAL_STATES:
                return None
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?",
                    (_now(now), job_id),
                )
            done = {
                r[0]
                for r in db.execute("SELECT chunk_index FROM chunks WHERE job_id = ?", (job_id,))
            }
        return JobWork(
            job_id=job_id,
            rate_key=row["rate_key"],
            request=json.loads(row["request"]),
            chunk_texts=row["chunk_texts"],
            missing_chunks=[i for i in range(row["total_chunks"]) if i not in done],
        )

    def record_chunk(
        self, job_id: str, chunk_index: int, results: list[dict[str, Any]], now: float | None = None
    ) -> bool:
        """Record one chunk's results; False (and nothing written) if it was already recorded or
        the job is no longer running, so a late or repeated chunk never counts twice."""
        with self._tx() as db:
            job = db.execute(
                "SELECT state, chunk_texts, total_texts, total_chunks FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
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
            inserted = db.execute(
                "INSERT OR IGNORE INTO chunks (job_id, chunk_index, results, recorded_at)"
                " VALUES (?, ?, ?, ?)",
                (job_id, chunk_index, json.dumps(results), _now(now)),
            ).rowcount
            if inserted:
                db.execute(
                    "UPDATE jobs SET completed_chunks = completed_chunks + 1,"
                    " completed_texts = completed_texts + ? WHERE id = ?",
                    (expected, job_id),
                )
            return bool(inserted)

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
            row = db.execute(
                "SELECT state, completed_chunks, total_chunks FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise KeyError(job_id)
            if row["state"] in TERMINAL_STATES:
                return None
            if state == "succeeded" and row["completed_chunks"] != row["total_chunks"]:
                raise ValueError(
                    f"job {job_id} has {row['completed_chunks']} of {row['total_chunks']} chunks"
                )
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                (state, _now(now), None if error is None else json.dumps(error), job_id),
            )
            return self._queue_event(job_id, event, now)

    def cancel_job(
        self,
        job_id: str,
        owner: str | None,
        event: EventFactory | None = None,
        now: float | None = None,
    ) -> Job | None:
        """Cancel the owner's queued or running job (recorded chunks stay); a terminal job is
        returned unchanged. None if there is no such job for this owner."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM jobs WHERE id = ? AND owner IS ?", (job_id, owner)
            ).fetchone()
            if row is None:
                return None
            if row["state"] in TERMINAL_STATES:
                return self._view(job_id)
            db.execute(
                "UPDATE jobs SET state = 'cancelled', cancelled_at = ? WHERE id = ?",
                (_now(now), job_id),
            )
            return self._queue_event(job_id, event, now)

    def _queue_event(self, job_id: str, event: EventFactory | None, now: float | None) -> Job:
        view = self._view(job_id)
        if event is None or view.callback_url is None:
            return view
        spec = event(view)
        self._db.execute(
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
        return self._view(job_id)

    # ---- webhook outbox ---------------------------------------------------------------------

    def claim_due_deliveries(
        self, lease_s: float, limit: int, now: float | None = None
    ) -> list[Delivery]:
        """Pending events whose next attempt is due, oldest first. Each is leased: its
        next_attempt_at moves `lease_s` ahead, so it is not claimed twice while in flight, and
        is attempted again if this process dies before recording the attempt."""
        at = _now(now)
        with self._tx() as db:
            rows = db.execute(
                "SELECT event_id, job_id, url, body, attempts FROM outbox"
                " WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (at, limit),
            ).fetchall()
            db.executemany(
                "UPDATE outbox SET next_attempt_at = ? WHERE event_id = ?",
                [(at + lease_s, row["event_id"]) for row in rows],
            )
        return [
            Delivery(
                row["event_id"], row["job_id"], row["url"], bytes(row["body"]), row["attempts"]
            )
            for row in rows
        ]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending event is due (None if none is pending)."""
        row = self._db.execute(
            "SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'"
        ).fetchone()
        due: float | None = row[0]
        return due

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
            row = db.execute(
                "SELECT attempts, state FROM outbox WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is None:
                raise KeyError(event_id)
            if row["state"] != "pending":
                recorded: DeliveryState = row["state"]
                return recorded
            attempt = row["attempts"] + 1
            db.execute(
                "INSERT INTO attempts (event_id, attempt, at, status_code, error)"
                " VALUES (?, ?, ?, ?, ?)",
                (event_id, attempt, at, status_code, error),
            )
            db.execute(
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

    def _view(self, job_id: str) -> Job:
        row = self._db.execute(
            "SELECT id, state, created_at, started_at, finished_at, cancelled_at, callback_url,"
            " metadata, total_texts, completed_texts, total_chunks, completed_chunks, error,"
            " json_extract(request, '$.labels') AS labels,"
            " json_extract(request, '$.hypothesis_template') AS hypothesis_template,"
            " json_extract(request, '$.multi_label') AS multi_label,"
            " json_extract(request, '$.top_k') AS top_k,"
            + "".join(f" json_extract(request, '$.{key}') AS {key}," for key in ECHOED_OPTIONS)
            + " 1 FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise KeyError(job_id)
        return Job(
            id=row["id"],
            state=row["state"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            cancelled_at=row["cancelled_at"],
            labels=json.loads(row["labels"]),
            hypothesis_template=row["hypothesis_template"],
            multi_label=bool(row["multi_label"]),
            prefilter_top_k=row["top_k"],
            **echoed_options(
                {
                    key: json.loads(row[key])
                    if key == "label_hypotheses" and row[key]
                    else row[key]
                    for key in ECHOED_OPTIONS
                }
            ),
            progress=JobProgress(
                total_texts=row["total_texts"],
                completed_texts=row["completed_texts"],
                total_chunks=row["total_chunks"],
                completed_chunks=row["completed_chunks"],
            ),
            callback_url=row["callback_url"],
            metadata=None if row["metadata"] is None else json.loads(row["metadata"]),
            error=None if row["error"] is None else JobError(**json.loads(row["error"])),
            deliveries=self._deliveries(job_id),
        )

    def _deliveries(self, job_id: str) -> list[WebhookDelivery]:
        events = self._db.execute(
            "SELECT event_id, event_type, url, state, next_attempt_at, created_at, finished_at"
            " FROM outbox WHERE job_id = ? ORDER BY created_at",
            (job_id,),
        ).fetchall()
        out = []
        for event in events:
            attempts = self._db.execute(
                "SELECT attempt, at, status_code, error FROM attempts"
                " WHERE event_id = ? ORDER BY attempt",
                (event["event_id"],),
            ).fetchall()
            out.append(
                WebhookDelivery(
                    **dict(event),
                    attempts=[DeliveryAttempt(**dict(attempt)) for attempt in attempts],
                )
            )
        return out


def _now(now: float | None) -> float:
    return time.time() if now is None else now
