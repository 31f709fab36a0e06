"""The job store's contract: one protocol, two implementations beside it, picked by URL.

`jobs.store` is `sqlite:///path` (embedded, one node: `sqlite_store.py`) or `postgresql://...`
(shared by runners on any node: `postgres_store.py`); `serve_app.jobs.opening.open_store` is the only place that looks at
the scheme. Both keep the same tables (`sqlite_schema.sql`, `postgres_schema.sql`) and share their
logic (`sql_store.py`), so every rule holds on both:
- terminal states (`succeeded`, `failed`, `cancelled`) never change (a trigger aborts the update);
- a chunk's result is written once (keyed by job and chunk), and only while its job is `running`;
- work is handed out in leases: `claim_chunk` gives a runner one chunk until the lease expires;
  the runner renews it while it works, and an expired lease goes back to the pool;
- chunks are handed out to tenants in turn (round robin over tenants with waiting work);
- an idempotency key names one job per tenant; a tenant sees only its own jobs.

Every method is blocking I/O: callers on an event loop run them in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from serve_app.config import ServerSecrets
from serve_app.jobs.models import DeliveryState, Job, JobState

ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request."""


class TooManyActiveJobs(Exception):
    """The tenant already has `jobs.max_active_per_tenant` queued or running jobs."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(active, limit)
        self.active, self.limit = active, limit


class StoreBoundExceeded(Exception):
    """Accepting the job would take the store past `jobs.max_store_bytes`."""

    def __init__(self, stored: int, needed: int, limit: int) -> None:
        super().__init__(stored, needed, limit)
        self.stored, self.needed, self.limit = stored, needed, limit


class StoreFull(Exception):
    """The database's disk is full (SQLITE_FULL, ENOSPC, PostgreSQL's DiskFull): wait for space."""


@dataclass(frozen=True)
class ChunkClaim:
    """One chunk leased to one runner: what it needs to score it."""

    job_id: str
    chunk_index: int
    tenant: str
    rate_key: str | None
    request: dict[
        str, Any
    ]  # labels, hypothesis_template, multi_label, top_k, and this chunk's texts
    expires_at: float


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
    tenant: str = ""  # whose secrets sign it ('' = anonymous)


# Builds the job's webhook event from its final view; called inside the terminal transaction.
EventFactory = Callable[[Job], OutboxEvent]


class JobStore(Protocol):
    """What the scheduler, the outbox and the tests use; nothing else knows the database."""

    url: str

    def close(self) -> None: ...

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
    ) -> tuple[Job, bool]: ...

    def get_job(self, job_id: str, owner: str | None) -> Job | None: ...

    def expired_at(self, job_id: str, owner: str | None) -> float | None: ...

    def list_jobs(
        self, owner: str | None, limit: int, cursor: str | None = None
    ) -> tuple[list[Job], str | None]: ...

    def results_page(
        self, job_id: str, page: int, page_size: int
    ) -> list[dict[str, Any] | None]: ...

    def claim_chunk(
        self, runner_id: str, lease_s: float, now: float | None = None
    ) -> ChunkClaim | None: ...

    def renew_lease(
        self,
        job_id: str,
        chunk_index: int,
        runner_id: str,
        lease_s: float,
        now: float | None = None,
    ) -> bool: ...

    def release_lease(self, job_id: str, chunk_index: int, runner_id: str) -> None: ...

    def record_chunk(
        self, job_id: str, chunk_index: int, results: list[dict[str, Any]], now: float | None = None
    ) -> bool: ...

    def completable_job_ids(self, limit: int = 100) -> list[str]: ...

    def finish_job(
        self,
        job_id: str,
        state: Literal["succeeded", "failed"],
        error: dict[str, str] | None = None,
        event: EventFactory | None = None,
        now: float | None = None,
    ) -> Job | None: ...

    def cancel_job(
        self,
        job_id: str,
        owner: str | None,
        event: EventFactory | None = None,
        now: float | None = None,
    ) -> Job | None: ...

    def expire_jobs(self, ttl_s: float, limit: int, now: float | None = None) -> int: ...

    def stored_bytes(self) -> int: ...

    def claim_due_deliveries(
        self, lease_s: float, limit: int, now: float | None = None
    ) -> list[Delivery]: ...

    def next_delivery_at(self) -> float | None: ...

    def record_attempt(
        self,
        event_id: str,
        delivered: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: float | None,
        now: float | None = None,
    ) -> DeliveryState: ...


def store_url(configured: str) -> str:
    """The store the runner opens: env ZSC_JOBS_STORE (a Secret on Kubernetes) over the config.
    Read by the runner replica, so a database password never sits in the app's config."""
    env = ServerSecrets().jobs_store
    return env.get_secret_value() if env is not None else configured


def is_shared(url: str) -> bool:
    """True for a store that runners on several nodes can share (PostgreSQL), False for SQLite."""
    return url.split(":", 1)[0].lower() in ("postgresql", "postgres")


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tenant_of(owner: str | None) -> str:
    return owner or ""


def request_hash(request: dict[str, Any], callback_url: str | None, metadata: Any) -> str:
    canonical = json.dumps(
        {"request": request, "callback_url": callback_url, "metadata": metadata},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def estimated_bytes(request: dict[str, Any]) -> int:
    """What a job will hold once every result is in: its texts twice (input and result's
    `sequence`) and, per text, each label with its score. A bound, not an exact count."""
    texts = sum(len(t.encode()) for t in request["texts"])
    per_text = 64 + sum(len(label.encode()) + 32 for label in request["labels"])
    return 2 * texts + per_text * len(request["texts"]) + 512
