"""The JobRunner deployment: the Ray shell around the job scheduler and the webhook outbox.

Ingress replicas never open the job store: they reach it through this deployment's handle
(`submit`, `get`, `list`, `cancel`). With a PostgreSQL store there are `jobs.runners` replicas on
any nodes, sharing the work through leases; with SQLite there is one, pinned by `build_app` to
the head node that holds the file (docs/OPERATIONS.md, "Where the job store lives"). The store
URL comes from env ZSC_JOBS_STORE when set (a Secret), else from the config. Its loops
(`serve_app.jobs.scheduler`: chunks and expiry; `serve_app.jobs.outbox`) start with the replica;
what is Ray's here is scoring through the `Scorer`'s handles, paying the shared rate limit, the
pause metric, and which failures of Ray's machinery are worth a retry.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.serve.exceptions import RayServeException

from serve_app.config import JobsConfig, ServerSecrets
from serve_app.core.errors import ServiceUnavailable
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.deployments.limiter import RateLimitClient
from serve_app.deployments.scoring import Scorer
from serve_app.jobs.models import Job, JobList, JobWithResults
from serve_app.jobs.opening import open_store
from serve_app.jobs.outbox import Outbox
from serve_app.jobs.scheduler import JobScheduler
from serve_app.jobs.store import store_url
from serve_app.jobs.webhooks import tenant_secrets
from serve_app.observability.metrics import JobRunnerMetrics

log = logging.getLogger("ray.serve")

# Failures of the machinery rather than of the request: the replica died or is restarting. The
# same chunk on a new replica will succeed, so these are retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    ObjectLostError,
    RayServeException,
    # A full Classifier queue (Overloaded) or an unavailable deployment, as the Scorer says them.
    ServiceUnavailable,
)


def remote_cause(exc: BaseException) -> BaseException:
    """What a replica raised, out of Ray's `RayTaskError`: the wrapper's text is the remote
    traceback, so a failed job's error would show that instead of the problem."""
    while isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return exc


def replica_id() -> str | None:
    """This replica's id, which names its leases; None outside Serve (the JobRunner's class run
    in-process by the HTTP edge's tests), where the scheduler names itself."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except RayServeException:
        return None


def is_transient(exc: BaseException) -> bool:
    return isinstance(remote_cause(exc), TRANSIENT_ERRORS)


@serve.deployment(name="JobRunner", num_replicas=1, max_ongoing_requests=256)
class JobRunner:
    def __init__(
        self, config: JobsConfig, scorer: Scorer, limiter: RateLimitClient | None = None
    ) -> None:
        configured = config.webhook.secret or ServerSecrets().webhook_secret
        secret = configured.get_secret_value() if configured is not None else None

        def secrets(tenant: str) -> list[str]:
            return tenant_secrets(config.webhook, secret, tenant)

        self.store = open_store(store_url(config.store_url))
        self.outbox = Outbox(self.store, config.webhook, secrets)
        self.scorer = scorer
        self.metrics = JobRunnerMetrics()
        self.scheduler = JobScheduler(
            self.store,
            config,
            score=self._score,
            is_transient=is_transient,
            # Jobs draw on their submitter's bucket chunk by chunk, waiting for tokens; they
            # never fail on the limit.
            pay=None
            if limiter is None
            else (lambda key, pairs: limiter.acquire_wait(key, limiter.cost_of(pairs))),
            on_terminal=self.outbox.wake,
            secrets=secrets,
            runner_id=replica_id(),
            on_pause=lambda paused: self.metrics.paused.set(1 if paused else 0),
        )
        # The constructor runs on the replica's user event loop, which keeps running after it.
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self.scheduler.run(), name="zsc-jobs"),
            loop.create_task(self.outbox.run(), name="zsc-outbox"),
            loop.create_task(self.scheduler.sweep(), name="zsc-jobs-expiry"),
        ]
        log.info("JobRunner %s ready", self.scheduler.runner_id)

    async def _score(self, request: PreparedRequest) -> Classification:
        try:
            return await self.scorer.classify(request)
        except RayTaskError as exc:
            raise remote_cause(exc) from None

    async def submit(
        self,
        request: PreparedRequest,
        owner: str | None = None,
        rate_key: str | None = None,
        callback_url: str | None = None,
        metadata: dict[str, object] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        return await self.scheduler.submit(
            request, owner, rate_key, callback_url, metadata, idempotency_key
        )

    async def get(
        self, job_id: str, owner: str | None, page: int = 1, page_size: int | None = None
    ) -> JobWithResults | None:
        return await self.scheduler.get(job_id, owner, page, page_size)

    async def list(self, owner: str | None, limit: int = 20, cursor: str | None = None) -> JobList:
        return await self.scheduler.list(owner, limit, cursor)

    async def cancel(self, job_id: str, owner: str | None) -> Job | None:
        return await self.scheduler.cancel(job_id, owner)

    async def ping(self) -> None:
        """The readiness probe of /healthz: fails as Serve's health check does."""
        await self.check_health()

    async def check_health(self) -> None:
        # A dead loop would leave jobs queued forever: fail the health check so Serve replaces
        # this replica, and the new one resumes from the store.
        for task in self._loops:
            if task.done():
                reason = "cancelled" if task.cancelled() else repr(task.exception())
                raise RuntimeError(f"job runner loop {task.get_name()} stopped: {reason}")
