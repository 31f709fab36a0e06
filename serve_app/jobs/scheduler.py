"""Runs jobs in chunks: picks up queued (and, after a restart, running) jobs, skips chunks
already recorded, waits for the submitter's rate-limit tokens, sends up to `max_parallel_chunks`
chunks at once (across all jobs), records each as it lands, and retries a chunk whose replica
died. Every state change is committed to the store before anything depends on it, so a crash at
any point re-runs at most the chunks that were in flight (each is recorded once whatever happens).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.config import JobsConfig
from serve_app.core.errors import ClientError
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification, TextResult
from serve_app.jobs import webhooks
from serve_app.jobs.models import Job, JobList, JobWithResults, ResultsPage
from serve_app.jobs.store import (
    TERMINAL_STATES,
    IdempotencyConflict,
    JobStore,
    JobWork,
    OutboxEvent,
)

log = logging.getLogger("ray.serve")

CHUNK_ATTEMPTS = 10
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# Loops wake on every change this process makes; the poll only bounds how stale they can be.
POLL_S = 2.0
ERROR_MESSAGE_CHARS = 500

Score = Callable[[PreparedRequest], Awaitable[Classification]]
Pay = Callable[[str | None, int], Awaitable[None]]  # (rate key, pairs): waits for tokens


def chunk_backoff_s(attempt: int) -> float:
    """Delay after the `attempt`-th failed try of a chunk (1-based): 0.5 s doubling to 30 s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (attempt - 1))


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


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


def chunk_request(work: JobWork, index: int) -> PreparedRequest:
    # Records stored before long texts and thresholds existed lack those keys: the old meaning.
    record, size = work.request, work.chunk_texts
    return PreparedRequest(
        texts=record["texts"][index * size : (index + 1) * size],
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
        secret: str | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.score = score
        self.is_transient = is_transient
        self.pay = pay
        self.on_terminal = on_terminal  # wakes the webhook outbox
        self.secret = secret
        self._chunk_slots = asyncio.Semaphore(config.max_parallel_chunks)
        self._active: dict[str, _ActiveJob] = {}
        # The event loop holds tasks only weakly: this set keeps running ones alive.
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    # ---- what callers ask ------------------------------------------------------------------

    def submit(
        self,
        request: PreparedRequest,
        owner: str | None,
        rate_key: str | None,
        callback_url: str | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> Job:
        """Queue an already validated job; a replayed Idempotency-Key returns the same job."""
        if callback_url is not None and self.secret is None:
            raise ClientError(
                "this server has no webhook secret (jobs.webhook.secret or ZSC_WEBHOOK_SECRET), "
                "so it cannot sign callbacks; submit without callback_url and poll the job"
            )
        try:
            job, created = self.store.create_job(
                request_record(request),
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
            self._wake.set()
        return job

    def get(
        self, job_id: str, owner: str | None, page: int, page_size: int | None
    ) -> JobWithResults | None:
        """The job (None if the owner has no such job); once it has ended, one page of its
        results (None for texts never run)."""
        job = self.store.get_job(job_id, owner)
        if job is None:
            return None
        view = JobWithResults(**job.model_dump())
        if job.state in TERMINAL_STATES:
            size = page_size or self.config.results_page_size
            pages = math.ceil(job.progress.total_texts / size)
            page_results = self.store.results_page(job_id, page, size)
            view.results = [None if r is None else TextResult(**r) for r in page_results]
            view.results_page = ResultsPage(
                page=page, page_size=size, total_pages=pages, has_more=page < pages
            )
        return view

    def list(self, owner: str | None, limit: int, cursor: str | None) -> JobList:
        """The owner's jobs, newest first; pass `next_cursor` back for the next page."""
        try:
            jobs, next_cursor = self.store.list_jobs(owner, limit, cursor)
        except KeyError:
            raise ClientError(
                f"unknown cursor {cursor!r}: pass the next_cursor of the previous page",
                status_code=400,
                type="invalid_cursor",
            ) from None
        return JobList(data=jobs, next_cursor=next_cursor)

    def cancel(self, job_id: str, owner: str | None) -> Job | None:
        """Stop a job: no new chunks start, chunks in flight are dropped, recorded ones stay.
        Cancelling an ended job changes nothing and returns it; None if there is no such job."""
        job = self.store.cancel_job(job_id, owner, event=self.event)
        if job is None:
            return None
        active = self._active.get(job_id)
        if active is not None and job.state == "cancelled":
            active.cancelled = True
            active.stop()
        self.on_terminal()
        return job

    # ---- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        # At most max_parallel_chunks jobs are active at once (oldest first), so a queue of many
        # jobs does not hold all their texts in memory; chunks of active jobs share the slots.
        while True:
            self._wake.clear()
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
            await wait_event(self._wake, POLL_S)

    async def _run_job(self, active: _ActiveJob) -> None:
        try:
            work = self.store.start_job(active.job_id)
            if work is not None:
                await self._run_chunks(active, work)
                if not active.cancelled:  # cancel() itself ended the job and queued its event
                    if active.error is None:
                        self._finish(active.job_id, "succeeded")
                    else:
                        self._finish(active.job_id, "failed", self._error_body(active.error))
        except Exception as exc:
            log.exception("job %s stopped by an internal error", active.job_id)
            self._finish(active.job_id, "failed", {"type": "internal_error", "message": str(exc)})
        finally:
            self._active.pop(active.job_id, None)
            self._wake.set()

    async def _run_chunks(self, active: _ActiveJob, work: JobWork) -> None:
        for index in work.missing_chunks:
            chunk = chunk_request(work, index)
            paid = self.pay is None or await _unless_stopped(
                active, self.pay(work.rate_key, chunk.pairs)
            )
            if not paid:
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
                classification = await self.score(chunk)
                break
            except Exception as exc:
                if attempt >= CHUNK_ATTEMPTS or not self.is_transient(exc):
                    raise
                delay = chunk_backoff_s(attempt)
                log.warning(
                    "job %s chunk %d: %s; retrying in %.1f s (attempt %d of %d)",
                    job_id,
                    index,
                    type(exc).__name__,
                    delay,
                    attempt + 1,
                    CHUNK_ATTEMPTS,
                )
                await asyncio.sleep(delay)
                attempt += 1
        self.store.record_chunk(job_id, index, [r.as_dict() for r in classification.results])

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
        self.store.finish_job(job_id, state, error, event=self.event)
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
