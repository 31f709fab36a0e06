"""The webhook outbox: delivers due events (signed by `serve_app.jobs.webhooks` with the job's
tenant's secrets) and records every attempt with the time of the next one, so the retry schedule
survives restarts. Claims are leased in the store, so several runners share one outbox and each
event is in flight on one of them at a time. A webhook may arrive twice after a crash, always
with the same `webhook-id`. Store calls run in worker threads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from serve_app.config import WebhookConfig
from serve_app.jobs import webhooks
from serve_app.jobs.scheduler import POLL_S, io, wait_event
from serve_app.jobs.store import Delivery, JobStore

log = logging.getLogger("ray.serve")

MAX_CONCURRENT_DELIVERIES = 8
# A claimed delivery is not claimed again for this long past its timeout: if the process dies
# mid-attempt, the event becomes due again once the lease runs out.
DELIVERY_LEASE_MARGIN_S = 30.0


class Outbox:
    def __init__(
        self,
        store: JobStore,
        config: WebhookConfig,
        secrets: Callable[[str], list[str]],
    ) -> None:
        self.store = store
        self.config = config
        self.secrets = secrets  # a tenant's secrets, newest first
        self._deliveries: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        lease_s = self.config.timeout_s + DELIVERY_LEASE_MARGIN_S
        while True:
            self._wake.clear()
            free = MAX_CONCURRENT_DELIVERIES - len(self._deliveries)
            try:
                for delivery in await io(self.store.claim_due_deliveries, lease_s, max(free, 0)):
                    task = asyncio.create_task(self._deliver(delivery))
                    self._deliveries.add(task)
                    task.add_done_callback(self._delivery_done)
                next_at = await io(self.store.next_delivery_at)
            except Exception as exc:  # a full disk or a database restart: try again later
                log.warning("webhook outbox: the job store failed (%s); retrying", exc)
                next_at = None
            if next_at is None or len(self._deliveries) >= MAX_CONCURRENT_DELIVERIES:
                timeout = POLL_S  # a finishing delivery wakes the loop
            else:
                timeout = min(POLL_S, max(0.0, next_at - time.time()))
            await wait_event(self._wake, timeout)

    async def _deliver(self, delivery: Delivery) -> None:
        status: int | None
        error: str | None
        secrets = self.secrets(delivery.tenant)
        if not secrets:
            ok, status, error = False, None, "no webhook secret configured; not sent"
        else:
            try:
                result = await webhooks.deliver(
                    delivery.url,
                    delivery.event_id,
                    delivery.body,
                    secrets,
                    self.config.timeout_s,
                    self.config.allow_hosts,
                )
                ok, status, error = result.ok, result.status_code, result.error
            except Exception as exc:  # a refused URL or a bug must not lose the event
                ok, status, error = False, None, f"{type(exc).__name__}: {exc}"
        delay = (
            None
            if ok
            else webhooks.next_attempt_delay(self.config.retry_schedule_s, delivery.attempts + 1)
        )
        state = await io(
            self.store.record_attempt,
            delivery.event_id,
            ok,
            status,
            error,
            None if delay is None else time.time() + delay,
        )
        log.info(
            "webhook %s for job %s: attempt %d %s (%s)",
            delivery.event_id,
            delivery.job_id,
            delivery.attempts + 1,
            state,
            status or error,
        )

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())
        self._wake.set()
