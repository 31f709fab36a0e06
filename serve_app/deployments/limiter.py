"""The shared rate limiter on Ray: one actor per application holds every client's token bucket.

A limiter inside each ingress replica would multiply the limit by the number of replicas, so the
buckets (`serve_app.core.ratelimit.RateLimiter`) live in one Ray actor that every ingress replica and
the job runner consult; a sync actor runs one call at a time, which makes every acquisition
atomic across replicas.

Why detached named actors and not 2.60 deployment-scoped actors:
- reach: a deployment-scoped actor is resolved with `serve.get_deployment_actor`, which works only
  inside replicas of the deployment that declares it; the JobRunner is another deployment and
  must draw from the same buckets. A named actor is found by name from any process.
- recovery: Serve recreates a dead deployment-scoped actor only after its next health check
  (every ~10 s) and marks the deployment UNHEALTHY meanwhile. Here the first caller that finds
  the actor dead creates it again at once (`get_if_exists=True` makes that race-free across
  replicas), and `max_restarts=-1` brings it back in place after a crash of its process.
- cost: it outlives `serve delete`/`serve.shutdown()` (one idle process, no CPU reserved) and a
  restart starts every bucket full; both are accepted for a limiter.
Its name carries the application's name, so two apps in one cluster never share buckets; the
namespace is explicit, so replicas (namespace "serve"), the driver and tools all find it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

from serve_app.config import RateLimitConfig
from serve_app.core.errors import LimitExceeded, RateLimited, ServiceUnavailable
from serve_app.core.ratelimit import ANONYMOUS_KEY, TOLERANCE, Decision, RateLimiter, policy_for
from serve_app.observability.metrics import LimiterMetrics

log = logging.getLogger("ray.serve")

ACTOR_NAMESPACE = "zsc"
# After a failed lookup, calls fail fast (per fail_mode) for this long instead of each one
# paying a lookup timeout while the actor is being recreated.
RECONNECT_BACKOFF_S = 0.5
# Fail-open warnings are logged at most this often, so an outage does not flood the logs.
WARN_EVERY_S = 10.0


def actor_name(app_name: str) -> str:
    return f"zsc-ratelimit:{app_name}"


@ray.remote(num_cpus=0, max_restarts=-1)
class RateLimitActor:
    """Holds the buckets. Sync methods, so Ray runs one acquisition at a time."""

    def __init__(self, config: dict[str, Any]):
        self._limiter = RateLimiter(RateLimitConfig.model_validate(config))

    def configure(self, config: dict[str, Any]) -> None:
        self._limiter.configure(RateLimitConfig.model_validate(config))

    def try_acquire(self, key: str, cost: float) -> Decision:
        return self._limiter.try_acquire(key, cost)


class LimiterUnavailable(Exception):
    """The limiter actor did not answer within `timeout_s` (dead, restarting or overloaded)."""


class RateLimitClient:
    """What the ingress (and the job runner) call; one per replica.

    `app_name` defaults to the application of the replica the client runs in, so a client built
    in `build_app` and passed to a deployment resolves it where it runs. It pickles as its
    configuration, so a bound method such as `client.acquire_wait` can be passed to a deployment.
    """

    def __init__(self, config: RateLimitConfig, app_name: str | None = None):
        self._config = config
        self._app_name = app_name
        self._handle: ActorHandle | None = None
        self._retry_at = 0.0
        self._last_warning = -WARN_EVERY_S
        self._connect_lock = asyncio.Lock()
        self._metrics = LimiterMetrics()

    def __reduce__(self) -> tuple[Any, ...]:
        return (RateLimitClient, (self._config, self._app_name))

    @property
    def unit(self) -> str:
        return "pairs" if self._config.cost == "pairs" else "requests"

    def cost_of(self, pairs: int) -> float:
        """The cost of one request or job chunk of `pairs` pairs under the configured cost mode."""
        return float(pairs) if self._config.cost == "pairs" else 1.0

    def connect(self, wait_s: float = 30.0) -> bool:
        """Find or create the actor and wait until it answers. Blocking: for replica start-up,
        so the first requests after a deploy are limited instead of meeting a starting actor."""
        try:
            handle = self._lookup()
            ray.get(handle.__ray_ready__.remote(), timeout=wait_s)
        except (GetTimeoutError, RayActorError, ValueError) as exc:
            log.warning("rate limiter actor not ready at start (%s); will retry per request", exc)
            return False
        self._handle = handle
        return True

    async def admit(self, key: str, cost: float) -> Decision | None:
        """Pay for one request now or refuse it; never waits for tokens.

        Returns the decision (its headers go on the answer), or None when the limiter did not
        answer and fail_mode is open. Raises LimitExceeded when the cost is above the client's
        burst (it could never pass), RateLimited (429) when the bucket is short, and
        ServiceUnavailable (503) when the limiter did not answer and fail_mode is closed.
        """
        policy = policy_for(self._config, key)[1]
        if cost > policy.burst + TOLERANCE:
            raise self._above_burst(cost, policy.burst)
        try:
            decision = await self._try_acquire(key, cost)
        except LimiterUnavailable as exc:
            if self._config.fail_mode == "closed":
                raise ServiceUnavailable(
                    "the rate limiter is unavailable; retry after 1 second", retry_after_s=1
                ) from None
            self._note_fail_open(exc)
            return None
        if decision.exceeds_burst:  # the actor already runs a newer policy with a smaller burst
            raise self._above_burst(cost, decision.quota)
        tags = {"client": key}
        if not decision.allowed:
            self._metrics.refused.inc(cost, tags=tags)
            raise RateLimited(
                f"rate limit exceeded: this request costs {cost:g} {self.unit}, more than this "
                f"client has left; retry after {decision.retry_after_s} s",
                headers=decision.headers(),
            )
        self._metrics.admitted.inc(cost, tags=tags)
        return decision

    async def acquire_wait(self, key: str | None, cost: float) -> None:
        """Wait until the client's bucket has paid for `cost`: for jobs, which wait, never fail.

        A cost above the burst is paid in burst-sized pieces, one after another. When the limiter
        does not answer: fail_mode open admits the rest; closed waits until the actor is back.
        """
        key = key or ANONYMOUS_KEY
        burst = policy_for(self._config, key)[1].burst
        remaining = float(cost)
        while remaining > TOLERANCE:
            piece = min(remaining, burst)
            try:
                decision = await self._try_acquire(key, piece)
            except LimiterUnavailable as exc:
                if self._config.fail_mode == "open":
                    self._note_fail_open(exc)
                    return
                await asyncio.sleep(RECONNECT_BACKOFF_S)
                continue
            if decision.allowed:
                self._metrics.admitted.inc(piece, tags={"client": key})
                remaining -= piece
            elif decision.exceeds_burst:
                burst = decision.quota
            else:
                await asyncio.sleep(decision.wait_s)

    def _above_burst(self, cost: float, burst: float) -> LimitExceeded:
        return LimitExceeded(
            f"this request costs {cost:g} {self.unit} but this client's rate limit allows at "
            f"most {burst:g} at once, so it can never pass; send smaller requests or submit it "
            "as a job with POST /v1/jobs, which waits for tokens instead of being refused"
        )

    async def _try_acquire(self, key: str, cost: float) -> Decision:
        actor = await self._actor()
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                actor.try_acquire.remote(key, cost), timeout=self._config.timeout_s
            )
        except asyncio.TimeoutError:
            # The call may still land later and take tokens: erring towards the client is fine.
            raise LimiterUnavailable(f"no answer within {self._config.timeout_s} s") from None
        except RayActorError as exc:
            # Dead or restarting: look it up again on the next call; get_if_exists creates it
            # anew if it is gone for good (ray.kill) and returns it if Ray restarted it.
            self._handle = None
            raise LimiterUnavailable(f"actor unavailable: {type(exc).__name__}") from None
        finally:
            self._metrics.latency_ms.observe((time.perf_counter() - started) * 1000.0)

    async def _actor(self) -> ActorHandle:
        if self._handle is not None:
            return self._handle
        async with self._connect_lock:
            if self._handle is None:
                if time.monotonic() < self._retry_at:
                    raise LimiterUnavailable("reconnecting to the limiter actor")
                try:
                    # The lookup talks to the GCS synchronously: keep it off the event loop.
                    self._handle = await asyncio.wait_for(
                        asyncio.to_thread(self._lookup), timeout=self._config.timeout_s
                    )
                except (asyncio.TimeoutError, RayActorError, ValueError) as exc:
                    self._retry_at = time.monotonic() + RECONNECT_BACKOFF_S
                    raise LimiterUnavailable(f"lookup failed: {exc!r}") from None
        return self._handle

    def _lookup(self) -> ActorHandle:
        app_name = self._app_name or serve.get_replica_context().app_name
        config = self._config.model_dump()
        handle = RateLimitActor.options(
            name=actor_name(app_name),
            namespace=ACTOR_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(config)
        # An actor that already existed may hold an older configuration (a redeploy with new
        # policies). Fire and forget: Ray runs one caller's calls in order, so this lands before
        # this replica's first acquisition.
        handle.configure.remote(config)
        return handle

    def _note_fail_open(self, exc: LimiterUnavailable) -> None:
        self._metrics.fail_open.inc()
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("rate limiter unavailable (%s): admitting unlimited (fail_mode=open)", exc)
