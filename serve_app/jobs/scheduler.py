"""Runs jobs in leased chunks: each runner claims a chunk at a time from the store (tenants in
turn), waits for the submitter's rate-limit tokens, scores it, records it once and lets go; up to
`max_parallel_chunks` chunks are in flight per runner. While it works on a chunk the runner
renews its lease; a runner that dies stops renewing and its chunks go back to the pool, so any
runner finishes any job. Every state change is committed before anything depends on it.

Store calls are blocking I/O: they run in worker threads, never on the event loop. A full disk
pauses claiming (one logged error, `on_pause(True)`) and the runner retries until space returns.

No Ray here: scoring, paying for tokens and telling a transient failure from a real one are
injected by the JobRunner deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar

from serve_app.config import JobsConfig
from serve_app.core.errors import ClientError, LimitExceeded, ServiceUnavailable
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification, TextResult
from serve_app.jobs import webhooks
from serve_app.jobs.models import Job, JobList, JobWithResults, ResultsPage
from serve_app.jobs.store import (
    TERMINAL_STATES,
    ChunkClaim,
    IdempotencyConflict,
    JobStore,
    OutboxEvent,
    StoreBoundExceeded,
    StoreFull,
    TooManyActiveJobs,
    tenant_of,
)

log = logging.getLogger("ray.serve")

CHUNK_ATTEMPTS = 10
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# Loops wake on every change this process makes; the poll only bounds how stale they can be
# (and how soon one runner sees work another runner's ingress call queued).
POLL_S = 2.0
# While the disk is full, claiming is retried this often.
PAUSE_S = 5.0
SWEEP_S = 60.0
ERROR_MESSAGE_CHARS = 500

Score = Callable[[PreparedRequest], Awaitable[Classification]]
Pay = Callable[[str | None, int], Awaitable[None]]  # (rate key, pairs): waits for tokens
P = ParamSpec("P")
T = TypeVar("T")


def chunk_backoff_s(attempt: int) -> float:
    """Delay after the `attempt`-th failed try of a chunk (1-based): 0.5 s doubling to 30 s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (attempt - 1))


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A blocking store call, off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def request_record(request: PreparedRequest) -> dict[str, Any]:
    """What the store keeps of a job's request (JSON)."""
    return {
        "texts": request.texts,
        "labels": request.labels,
        "hypothesis_template": request.hypothesis_template,
        "multi_label": request.multi_label,
        "top_k": request.top_k,
        "label_hypotheses": request.label_hypotheses,
        "long_text": request.long_text,
        "chunk_stride": request.chunk_stride,
        "chunk_aggregate": request.chunk_aggregate,
        "threshold": request.threshold,
        "max_chunks": request.max_chunks,
    }


def chunk_request(claim: ChunkClaim) -> PreparedRequest:
    # Records stored before long texts and thresholds existed lack those keys: the old meaning.
    record = claim.request
    return PreparedRequest(
        texts=record["texts"],
        labels=record["labels"],
        hypothesis_template=record["hypothesis_template"],
        multi_label=record["multi_label"],
        top_k=record.get("top_k"),
        label_hypotheses=record.get("label_hypotheses"),
        long_text=record.get("long_text", "truncate"),
        chunk_stride=record.get("chunk_stride", 0),
        chunk_aggregate=record.get("chunk_aggregate", "max"),
        threshold=record.get("threshold"),
        max_chunks=record.get("max_chunks", 1),
    )


class JobScheduler:
    def __init__(
        self,
        store: JobStore,
        config: JobsConfig,
        score: Score,
        is_transient: Callable[[BaseException], bool],
        pay: Pay | None = None,
        on_terminal: Callable[[], None] = lambda: None,
        secrets: Callable[[str], list[str]] = lambda tenant: [],
        runner_id: str | None = None,
        on_pause: Callable[[bool], None] = lambda paused: None,
    ) -> None:
        self.store = store
        self.config = config
        self.score = score
        self.is_transient = is_transient
        self.pay = pay
        self.on_terminal = on_terminal  # wakes the webhook outbox
        self.secrets = secrets  # a tenant's webhook secrets, newest first
        self.runner_id = runner_id or f"runner_{uuid.uuid4().hex[:12]}"
        self.on_pause = on_pause
        self.paused = False
        self._in_flight: dict[str, set[asyncio.Task[None]]] = {}  # job id -> its chunk tasks
        self._running = 0
        self._wake = asyncio.Event()

    # ---- what callers ask ------------------------------------------------------------------

    async def submit(
        self,
        request: PreparedRequest,
        owner: str | None,
        rate_key: str | None,
        callback_url: str | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> Job:
        """Queue an already validated job; a replayed Idempotency-Key returns the same job."""
        if callback_url is not None and not self.secrets(tenant_of(owner)):
            raise ClientError(
                "this server has no webhook secret (jobs.webhook.secret or ZSC_WEBHOOK_SECRET), "
                "so it cannot sign callbacks; submit without callback_url and poll the job"
            )
        try:
            job, created = await io(
                self.store.create_job,
                request_record(request),
                chunk_texts=self.config.chunk_texts,
                owner=owner,
                rate_key=rate_key,
                callback_url=callback_url,
                metadata=metadata,
                idempotency_key=idempotency_key,
                max_active=self.config.max_active_per_tenant,
                max_store_bytes=self.config.max_store_bytes,
            )
        except IdempotencyConflict as exc:
            raise ClientError(str(exc), type="idempotency_key_reused") from None
        except TooManyActiveJobs as exc:
            raise ClientError(
                f"you have {exc.active} queued or running jobs, the most one API key may have "
                f"(jobs.max_active_per_tenant = {exc.limit}); wait for one to end or cancel one",
                status_code=429,
                type="too_many_active_jobs",
            ) from None
        except StoreBoundExceeded as exc:
            if exc.needed > exc.limit:
                raise LimitExceeded(
                    f"this job needs about {exc.needed} bytes of the job store, more than all of "
                    f"it (jobs.max_store_bytes = {exc.limit}); split it into smaller jobs",
                    type="job_too_large",
                ) from None
            raise LimitExceeded(
                f"the job store is full ({exc.stored} of jobs.max_store_bytes = {exc.limit} "
                f"bytes; this job needs about {exc.needed}); retry once older jobs expire "
                f"(jobs.ttl_s = {self.config.ttl_s:g} s after they end), or submit fewer texts",
                type="job_store_full",
            ) from None
        except StoreFull:
            raise ServiceUnavailable(
                "the job store's disk is full; retry later", retry_after_s=60
            ) from None
        if created:
            self._wake.set()
        return job

    async def get(
        self, job_id: str, owner: str | None, page: int, page_size: int | None
    ) -> JobWithResults | None:
        """The job (None if the tenant has no such job; 404 job_expired once it expired);
        once it has ended, one page of its results (None for texts never run)."""
        job = await io(self.store.get_job, job_id, owner)
        if job is None:
            await self._raise_if_expired(job_id, owner)
            return None
        view = JobWithResults(**job.model_dump())
        if job.state in TERMINAL_STATES:
            size = page_size or self.config.results_page_size
            pages = math.ceil(job.progress.total_texts / size)
            page_results = await io(self.store.results_page, job_id, page, size)
            view.results = [None if r is None else TextResult(**r) for r in page_results]
            view.results_page = ResultsPage(
                page=page, page_size=size, total_pages=pages, has_more=page < pages
            )
        return view

    async def _raise_if_expired(self, job_id: str, owner: str | None) -> None:
        expired_at = await io(self.store.expired_at, job_id, owner)
        if expired_at is not None:
            raise ClientError(
                f"job {job_id!r} expired: finished jobs and their results are deleted "
                f"jobs.ttl_s = {self.config.ttl_s:g} s after they end (this one at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expired_at))})",
                status_code=404,
                type="job_expired",
            )

    async def list(self, owner: str | None, limit: int, cursor: str | None) -> JobList:
        """The tenant's jobs, newest first; pass `next_cursor` back for the next page."""
        try:
            jobs, next_cursor = await io(self.store.list_jobs, owner, limit, cursor)
        except KeyError:
            raise ClientError(
                f"unknown cursor {cursor!r}: pass the next_cursor of the previous page",
                status_code=400,
                type="invalid_cursor",
            ) from None
        return JobList(data=jobs, next_cursor=next_cursor)

    async def cancel(self, job_id: str, owner: str | None) -> Job | None:
        """Stop a job: no new chunks start, chunks in flight are dropped (here at once, on other
        runners at their next lease renewal), recorded ones stay. Cancelling an ended job
        changes nothing and returns it; None if there is no such job."""
        job = await io(self.store.cancel_job, job_id, owner, event=self.event)
        if job is None:
            await self._raise_if_expired(job_id, owner)
            return None
        if job.state == "cancelled":
            for task in self._in_flight.get(job_id, ()):
                task.cancel()  # cancelling the awaited DeploymentResponse cancels the request too
        self.on_terminal()
        return job

    # ---- the loops -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._finish_completed()
                await self._fill()
            except StoreFull as exc:
                self._set_paused(True, exc)
            except Exception:  # the database restarting, say: the loop must outlive it
                log.exception("job runner %s: the job store failed; retrying", self.runner_id)
                await asyncio.sleep(POLL_S)
            await wait_event(self._wake, PAUSE_S if self.paused else POLL_S)

    async def sweep(self) -> None:
        """Delete expired jobs in small batches (one transaction each), every SWEEP_S."""
        while True:
            try:
                while (
                    await io(self.store.expire_jobs, self.config.ttl_s, self.config.sweep_batch)
                    == self.config.sweep_batch
                ):
                    await asyncio.sleep(0)
            except Exception:
                log.exception("job expiry sweep failed; retrying in %.0f s", SWEEP_S)
            await asyncio.sleep(SWEEP_S)

    def _set_paused(self, paused: bool, exc: BaseException | None = None) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            log.error("job store is full (%s): runner %s paused until space returns", exc,
                      self.runner_id)  # fmt: skip
        else:
            log.warning("job store has space again: runner %s resumed", self.runner_id)
        self.on_pause(paused)

    async def _fill(self) -> None:
        # Paused, one chunk at a time probes for space: its result written resumes the runner.
        limit = 1 if self.paused else self.config.max_parallel_chunks
        while self._running < limit:
            claim = await io(self.store.claim_chunk, self.runner_id, self.config.lease_s)
            if claim is None:
                return
            self._running += 1
            task = asyncio.create_task(
                self._run_claim(claim), name=f"zsc-chunk-{claim.job_id}-{claim.chunk_index}"
            )
            self._in_flight.setdefault(claim.job_id, set()).add(task)
            task.add_done_callback(functools.partial(self._chunk_done, claim.job_id))

    def _chunk_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._running -= 1
        tasks = self._in_flight.get(job_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._in_flight[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: chunk task crashed", job_id, exc_info=task.exception())
        self._wake.set()

    async def _finish_completed(self) -> None:
        for job_id in await io(self.store.completable_job_ids):
            await self._finish(job_id, "succeeded")

    async def _run_claim(self, claim: ChunkClaim) -> None:
        this = asyncio.current_task()
        assert this is not None
        renewer = asyncio.create_task(self._renew(claim, this))
        try:
            chunk = chunk_request(claim)
            if self.pay is not None:
                # Jobs draw on their submitter's bucket chunk by chunk, waiting for tokens.
                await self.pay(claim.rate_key, chunk.pairs)
            try:
                classification = await self._score(claim, chunk)
            except Exception as exc:
                # One failed chunk fails the job: do not spend the model on the rest.
                await self._finish(claim.job_id, "failed", self._error_body(exc))
                return
            await io(
                self.store.record_chunk,
                claim.job_id,
                claim.chunk_index,
                [r.as_dict() for r in classification.results],
            )
            self._set_paused(False)
        except asyncio.CancelledError:
            # The job ended, the lease went elsewhere, or this replica stops: free the chunk now
            # (a no-op if it is no longer ours) rather than when the lease runs out.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    io(self.store.release_lease, claim.job_id, claim.chunk_index, self.runner_id)
                )
            raise
        except StoreFull as exc:
            self._set_paused(True, exc)
            with contextlib.suppress(Exception):  # else the lease expires: the chunk runs later
                await io(self.store.release_lease, claim.job_id, claim.chunk_index, self.runner_id)
        finally:
            renewer.cancel()

    async def _renew(self, claim: ChunkClaim, work: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                held = await io(
                    self.store.renew_lease,
                    claim.job_id,
                    claim.chunk_index,
                    self.runner_id,
                    self.config.lease_s,
                )
            except Exception as exc:  # a store hiccup: keep working, try again next time
                log.warning("job %s: lease renewal failed: %s", claim.job_id, exc)
                continue
            if not held:
                work.cancel()  # the job ended (cancelled or failed) or another runner has it
                return

    async def _score(self, claim: ChunkClaim, chunk: PreparedRequest) -> Classification:
        attempt = 1
        while True:
            try:
                return await self.score(chunk)
            except Exception as exc:
                if attempt >= CHUNK_ATTEMPTS or not self.is_transient(exc):
                    raise
                delay = chunk_backoff_s(attempt)
                log.warning(
                    "job %s chunk %d: %s; retrying in %.1f s (attempt %d of %d)",
                    claim.job_id,
                    claim.chunk_index,
                    type(exc).__name__,
                    delay,
                    attempt + 1,
                    CHUNK_ATTEMPTS,
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def _finish(
        self,
        job_id: str,
        state: Literal["succeeded", "failed"],
        error: dict[str, str] | None = None,
    ) -> None:
        job = await io(self.store.finish_job, job_id, state, error, event=self.event)
        if job is not None and state == "failed":
            for task in self._in_flight.get(job_id, ()):
                if task is not asyncio.current_task():
                    task.cancel()
        self.on_terminal()

    def event(self, job: Job) -> OutboxEvent:
        """The webhook event of a job that just ended (called inside the store's transaction)."""
        event_type = f"job.{job.state}"
        body = webhooks.serialize_event(webhooks.build_event(event_type, job))
        delay = webhooks.next_attempt_delay(self.config.webhook.retry_schedule_s, 0)
        return OutboxEvent(event_type, body, time.time() + (delay or 0.0))

    def _error_body(self, exc: BaseException) -> dict[str, str]:
        type_ = "classifier_unavailable" if self.is_transient(exc) else "classifier_error"
        return {"type": type_, "message": f"{type(exc).__name__}: {exc}"[:ERROR_MESSAGE_CHARS]}
