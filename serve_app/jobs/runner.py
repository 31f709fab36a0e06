"""The JobRunner deployment: runs jobs in chunks through the Classifier and delivers webhooks.

One replica, and it is the only process that opens the SQLite job store: ingress replicas reach
the store through this deployment's handle (`submit`, `get`, `list`, `cancel`), so they may run
on any node. The runner itself must run on the node that holds the database file. `build_app`
pins it to the Ray head node (the `node:__internal_head__` resource); on a multi-node cluster
give `jobs.db_path` a directory on the head node's persistent disk (on KubeRay, a volume mounted
into the head pod), or jobs and results do not survive a restart of that node.

Two background loops start with the replica and run on its event loop:
- jobs: picks up queued jobs and, after a restart, running ones, skipping chunks already
  recorded; waits for the submitter's rate-limit tokens (`serve_app.limiter`, when enabled);
  sends up to `max_parallel_chunks` chunks at once (across all jobs) to
  `Classifier.classify_chunk`, records each as it lands, and retries a chunk whose replica died.
- outbox: delivers due webhook events (signed by `serve_app.jobs.webhooks`) and records every
  attempt with the time of the next one, so the retry schedule survives restarts too.

Every state change is committed to the store before anything depends on it; a crash at any point
re-runs at most the chunks and deliveries that were in flight (a chunk is recorded once whatever
happens; a webhook may arrive twice, always with the same `webhook-id`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

from ray import serve
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from serve_app.config import JobsConfig
from serve_app.errors import ClientError
from serve_app.jobs import webhooks
from serve_app.jobs.store import (
    TERMINAL_STATES,
    Delivery,
    IdempotencyConflict,
    JobStore,
    JobWork,
    OutboxEvent,
)
from serve_app.limiter import RateLimitClient
from serve_app.schemas import PreparedRequest

log = logging.getLogger("ray.serve")

# Failures of the machinery rather than of the request: the replica died or is restarting. The
# same chunk on a new replica will succeed, so these are retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    ObjectLostError,
    RayServeException,
)
CHUNK_ATTEMPTS = 10
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# Loops wake on every change this process makes; the poll only bounds how stale they can be.
POLL_S = 2.0
MAX_CONCURRENT_DELIVERIES = 8
# A claimed delivery is not claimed again for this long past its timeout: if the process dies
# mid-attempt, the event becomes due again once the lease runs out.
DELIVERY_LEASE_MARGIN_S = 30.0
ERROR_MESSAGE_CHARS = 500


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return is_transient(exc.cause)
    return isinstance(exc, TRANSIENT_ERRORS)


def chunk_backoff_s(attempt: int) -> float:
    """Delay after the `attempt`-th failed try of a chunk (1-based): 0.5 s doubling to 30 s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1))


@dataclass
class _ActiveJob:
    """A job this process is running now (in memory only; the store has the truth)."""

    job_id: str
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: set[asyncio.Task[None]] = field(default_factory=set)
    cancelled: bool = False
    error: BaseException | None = None

    def stop(self) -> None:
        self.stopped.set()
        for task in self.chunks:
            task.cancel()  # cancelling the awaited DeploymentResponse cancels the request too


@serve.deployment(name="JobRunner", num_replicas=1, max_ongoing_requests=256)
class JobRunner:
    def __init__(
        self,
        jobs_config: dict[str, Any],
        classifier: DeploymentHandle,
        limiter: RateLimitClient | None = None,
    ):
        self.config = JobsConfig.model_validate(jobs_config)
        self.webhook = self.config.webhook
        self.secret = self.webhook.secret or os.environ.get("ZSC_WEBHOOK_SECRET") or None
        self.store = JobStore(self.config.db_path)
        self.classifier = classifier
        # Jobs draw on their submitter's token bucket chunk by chunk, waiting for tokens; they
        # never fail on the limit.
        self.limiter = limiter
        self._chunk_slots = asyncio.Semaphore(self.config.max_parallel_chunks)
        self._active: dict[str, _ActiveJob] = {}
        # The event loop holds tasks only weakly: these sets keep running ones alive.
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._jobs_wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        # The constructor runs on the replica's user event loop, which keeps running after it.
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._schedule_jobs(), name="zsc-jobs"),
            loop.create_task(self._dispatch_outbox(), name="zsc-outbox"),
        ]
        log.info("JobRunner ready: store %s", self.store.path.resolve())

    # ---- methods called through the handle --------------------------------------------------

    async def submit(
        self,
        request: PreparedRequest,
        owner: str | None = None,
        rate_key: str | None = None,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue an already validated job; a replayed Idempotency-Key returns the same job."""
        if callback_url is not None and self.secret is None:
            raise ClientError(
                "this server has no webhook secret (jobs.webhook.secret or ZSC_WEBHOOK_SECRET), "
                "so it cannot sign callbacks; submit without callback_url and poll the job"
            )
        try:
            job, created = self.store.create_job(
                {
                    "texts": request.texts,
                    "labels": request.labels,
                    "hypothesis_template": request.hypothesis_template,
                    "multi_label": request.multi_label,
                },
                chunk_texts=self.config.chunk_texts,
                owner=owner,
                rate_key=rate_key,
                callback_url=callback_url,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        except IdempotencyConflict as exc:
            raise ClientError(str(exc), type="idempotency_key_reused") from None
        if created:
            self._jobs_wake.set()
        return job

    async def get(
        self, job_id: str, owner: str | None, page: int = 1, page_size: int | None = None
    ) -> dict[str, Any] | None:
        """The job (None if the owner has no such job); once it has ended, one page of its
        results (None for texts never run)."""
        job = self.store.get_job(job_id, owner)
        if job is None:
            return None
        job["results"] = None
        job["results_page"] = None
        if job["state"] in TERMINAL_STATES:
            size = page_size or self.config.results_page_size
            pages = math.ceil(job["progress"]["total_texts"] / size)
            job["results"] = self.store.results_page(job_id, page, size)
            job["results_page"] = {
                "page": page,
                "page_size": size,
                "total_pages": pages,
                "has_more": page < pages,
            }
        return job

    async def list(
        self, owner: str | None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        """The owner's jobs, newest first; pass `next_cursor` back for the next page."""
        try:
            jobs, next_cursor = self.store.list_jobs(owner, limit, cursor)
        except KeyError:
            raise ClientError(
                f"unknown cursor {cursor!r}: pass the next_cursor of the previous page",
                status_code=400,
                type="invalid_cursor",
            ) from None
        return {"object": "list", "data": jobs, "next_cursor": next_cursor}

    async def cancel(self, job_id: str, owner: str | None) -> dict[str, Any] | None:
        """Stop a job: no new chunks start, chunks in flight are dropped, recorded ones stay.
        Cancelling an ended job changes nothing and returns it; None if there is no such job."""
        job = self.store.cancel_job(job_id, owner, event=self._event)
        if job is None:
            return None
        active = self._active.get(job_id)
        if active is not None and job["state"] == "cancelled":
            active.cancelled = True
            active.stop()
        self._outbox_wake.set()
        return job

    async def check_health(self) -> None:
        # A dead loop would leave jobs queued forever: fail the health check so Serve replaces
        # this replica, and the new one resumes from the store.
        for task in self._loops:
            if task.done():
                reason = "cancelled" if task.cancelled() else repr(task.exception())
                raise RuntimeError(f"job runner loop {task.get_name()} stopped: {reason}")

    # ---- jobs -------------------------------------------------------------------------------

    async def _schedule_jobs(self) -> None:
        # At most max_parallel_chunks jobs are active at once (oldest first), so a queue of many
        # jobs does not hold all their texts in memory; chunks of active jobs share the slots.
        while True:
            self._jobs_wake.clear()
            for job_id in self.store.active_job_ids():
                if len(self._active) >= self.config.max_parallel_chunks:
                    break
                if job_id in self._active:
                    continue
                active = _ActiveJob(job_id)
                self._active[job_id] = active
                task = asyncio.create_task(self._run_job(active), name=f"zsc-job-{job_id}")
                self._job_tasks.add(task)
                task.add_done_callback(self._job_tasks.discard)
            await _wait(self._jobs_wake, POLL_S)

    async def _run_job(self, active: _ActiveJob) -> None:
        try:
            work = self.store.start_job(active.job_id)
            if work is not None:
                await self._run_chunks(active, work)
                if not active.cancelled:  # cancel() itself ended the job and queued its event
                    if active.error is None:
                        self._finish(active.job_id, "succeeded")
                    else:
                        self._finish(active.job_id, "failed", _error_body(active.error))
        except Exception as exc:
            log.exception("job %s stopped by an internal error", active.job_id)
            self._finish(active.job_id, "failed", {"type": "internal_error", "message": str(exc)})
        finally:
            self._active.pop(active.job_id, None)
            self._jobs_wake.set()

    async def _run_chunks(self, active: _ActiveJob, work: JobWork) -> None:
        request = work.request
        size = work.chunk_texts
        for index in work.missing_chunks:
            chunk = PreparedRequest(
                texts=request["texts"][index * size : (index + 1) * size],
                labels=request["labels"],
                hypothesis_template=request["hypothesis_template"],
                multi_label=request["multi_label"],
            )
            if self.limiter is not None:
                cost = self.limiter.cost_of(chunk.pairs)
                paid = self.limiter.acquire_wait(work.rate_key, cost)
                if not await _unless_stopped(active, paid):
                    break
            await self._chunk_slots.acquire()
            if active.stopped.is_set():
                self._chunk_slots.release()
                break
            task = asyncio.create_task(self._run_chunk(work.job_id, index, chunk))
            active.chunks.add(task)
            task.add_done_callback(functools.partial(self._chunk_done, active))
        while active.chunks:
            await asyncio.wait(set(active.chunks))

    async def _run_chunk(self, job_id: str, index: int, chunk: PreparedRequest) -> None:
        attempt = 1
        while True:
            try:
                results = await self.classifier.classify_chunk.remote(chunk)
                break
            except Exception as exc:
                if attempt >= CHUNK_ATTEMPTS or not is_transient(exc):
                    raise
                delay = chunk_backoff_s(attempt)
                log.warning(
                    "job %s chunk %d: %s; retrying in %.1f s (attempt %d of %d)",
                    job_id, index, type(exc).__name__, delay, attempt + 1, CHUNK_ATTEMPTS,
                )
                await asyncio.sleep(delay)
                attempt += 1
        self.store.record_chunk(job_id, index, results)

    def _chunk_done(self, active: _ActiveJob, task: asyncio.Task[None]) -> None:
        self._chunk_slots.release()
        active.chunks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if active.error is None and not active.cancelled:
            active.error = task.exception()
            active.stop()  # one failed chunk fails the job: do not spend the model on the rest

    def _finish(
        self,
        job_id: str,
        state: Literal["succeeded", "failed"],
        error: dict[str, str] | None = None,
    ) -> None:
        self.store.finish_job(job_id, state, error, event=self._event)
        self._outbox_wake.set()

    def _event(self, job: dict[str, Any]) -> OutboxEvent:
        """The webhook event of a job that just ended (called inside the store's transaction)."""
        event_type = f"job.{job['state']}"
        body = webhooks.serialize_event(webhooks.build_event(event_type, job))
        delay = webhooks.next_attempt_delay(self.webhook.retry_schedule_s, 0)
        return OutboxEvent(event_type, body, time.time() + (delay or 0.0))

    # ---- webhook outbox ---------------------------------------------------------------------

    async def _dispatch_outbox(self) -> None:
        lease_s = self.webhook.timeout_s + DELIVERY_LEASE_MARGIN_S
        while True:
            self._outbox_wake.clear()
            free = MAX_CONCURRENT_DELIVERIES - len(self._deliveries)
            for delivery in self.store.claim_due_deliveries(lease_s, max(free, 0)):
                task = asyncio.create_task(self._deliver(delivery))
                self._deliveries.add(task)
                task.add_done_callback(self._delivery_done)
            next_at = self.store.next_delivery_at()
            if next_at is None or len(self._deliveries) >= MAX_CONCURRENT_DELIVERIES:
                timeout = POLL_S  # a finishing delivery wakes the loop
            else:
                timeout = min(POLL_S, max(0.0, next_at - time.time()))
            await _wait(self._outbox_wake, timeout)

    async def _deliver(self, delivery: Delivery) -> None:
        if self.secret is None:
            ok, status, error = False, None, "no webhook secret configured; not sent"
        else:
            try:
                result = await webhooks.deliver(
                    delivery.url,
                    delivery.event_id,
                    delivery.body,
                    self.secret,
                    self.webhook.timeout_s,
                    self.webhook.allow_hosts,
                )
                ok, status, error = result.ok, result.status_code, result.error
            except Exception as exc:  # a refused URL or a bug must not lose the event
                ok, status, error = False, None, f"{type(exc).__name__}: {exc}"
        delay = None if ok else webhooks.next_attempt_delay(
            self.webhook.retry_schedule_s, delivery.attempts + 1
        )
        state = self.store.record_attempt(
            delivery.event_id,
            ok,
            status,
            error,
            None if delay is None else time.time() + delay,
        )
        log.info(
            "webhook %s for job %s: attempt %d %s (%s)",
            delivery.event_id, delivery.job_id, delivery.attempts + 1, state, status or error,
        )

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())
        self._outbox_wake.set()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass


async def _unless_stopped(active: _ActiveJob, waiting: Awaitable[None]) -> bool:
    """Await `waiting` unless the job stops first; True if it completed."""
    work = asyncio.ensure_future(waiting)
    stop = asyncio.ensure_future(active.stopped.wait())
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not work.done():
        work.cancel()
        return False
    work.result()
    return not active.stopped.is_set()


def _error_body(exc: BaseException) -> dict[str, str]:
    type_ = "classifier_unavailable" if is_transient(exc) else "classifier_error"
    return {"type": type_, "message": f"{type(exc).__name__}: {exc}"[:ERROR_MESSAGE_CHARS]}
