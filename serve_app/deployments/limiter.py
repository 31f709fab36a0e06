"""The shared rate limiter on Ray: `rate_limit.shards` actors per app hold every client's bucket.

A limiter inside each ingress replica would multiply the limit by the number of replicas, so the
buckets (`serve_app.core.ratelimit.RateLimiter`) live in Ray actors that every ingress replica and
the job runner consult. Each client key lives in exactly one shard (`shard_of`, a stable hash) and
a sync actor runs one call at a time, so every acquisition is atomic across replicas and the
limit stays exact per key however many shards share the load.

A Ray call costs about a millisecond, the bucket arithmetic a few microseconds. So each client
coalesces, per shard, the admissions that arrive while its call to that shard is in flight (or
within `coalesce_window_s` of the last one) into one call that decides them in arrival order
(`RateLimiter.try_acquire_many`: the same decisions as one call each). A lone admission with
nothing in flight goes out at once, so light load pays no window.

Shards are detached named actors, not 2.60 deployment-scoped ones, so the JobRunner reaches them
and the first caller recreates a dead one at once (docs/ARCHITECTURE.md, "Design decisions").
Shard 0 is `zsc-ratelimit:<app>`, shard i `zsc-ratelimit:<app>:<i>`, in namespace "zsc".
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

from serve_app.config import RateLimitConfig
from serve_app.core.errors import LimitExceeded, RateLimited, ServiceUnavailable
from serve_app.core.ratelimit import (
    ANONYMOUS_KEY,
    TOLERANCE,
    Decision,
    RateLimiter,
    check_cost,
    metric_label,
    policy_for,
    shard_of,
)
from serve_app.observability.metrics import LimiterMetrics

log = logging.getLogger("ray.serve")

ACTOR_NAMESPACE = "zsc"
ACTOR_PREFIX = "zsc-ratelimit:"
# After a failed lookup, calls to that shard fail fast (per fail_mode) for this long instead of
# each one paying a lookup timeout while the actor is being recreated.
RECONNECT_BACKOFF_S = 0.5
# Fail-open warnings are logged at most this often, so an outage does not flood the logs.
WARN_EVERY_S = 10.0

Item = TypeVar("Item")
Result = TypeVar("Result")


def actor_name(app_name: str, shard: int = 0) -> str:
    """The name of one limiter shard of an app (shard 0 keeps the name from before sharding)."""
    return f"{ACTOR_PREFIX}{app_name}" if shard == 0 else f"{ACTOR_PREFIX}{app_name}:{shard}"


def limiter_actor_names(app_name: str) -> list[str]:
    """The app's limiter shards alive now, under any shard count it ever ran with."""
    base = actor_name(app_name)
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == ACTOR_NAMESPACE
    ]
    return sorted(
        n for n in names if n == base or (n.startswith(base + ":") and n[len(base) + 1 :].isdigit())
    )


def remove_limiters(app_name: str) -> int:
    """Kill every limiter shard of an app (they are detached and outlive it); returns how many."""
    killed = 0
    for name in limiter_actor_names(app_name):
        try:
            ray.kill(ray.get_actor(name, namespace=ACTOR_NAMESPACE))
            killed += 1
        except ValueError:  # gone meanwhile
            pass
    return killed


@ray.remote(num_cpus=0, max_restarts=-1, scheduling_strategy="SPREAD")
class RateLimitActor:
    """One shard's buckets. Sync methods, so Ray runs one call (one batch) at a time."""

    def __init__(self, config: RateLimitConfig):
        self._limiter = RateLimiter(config)
        self._calls = 0
        self._admissions = 0

    def configure(self, config: RateLimitConfig) -> None:
        self._limiter.configure(config)

    def try_acquire_many(self, requests: list[tuple[str, float]]) -> list[Decision]:
        self._calls += 1
        self._admissions += len(requests)
        return self._limiter.try_acquire_many(requests)

    def stats(self) -> dict[str, int]:
        """Calls and admissions answered since this actor started, and buckets held now: with
        `ray.get_actor(actor_name(app, i), namespace="zsc")`, how much each call coalesces."""
        return {"calls": self._calls, "admissions": self._admissions, "buckets": len(self._limiter)}


class LimiterUnavailable(Exception):
    """A limiter shard did not answer within `timeout_s` (dead, restarting or overloaded)."""


class Coalescer(Generic[Item, Result]):
    """Sends items through `send` in batches, one batch in flight at a time, in arrival order.

    An item that arrives while nothing is in flight, and no batch went out within `window_s`,
    goes out at once, alone. Items that arrive while a batch is in flight, or within the window
    of the last one, wait and go out together as the next batch. `send(items, waited_s)` answers
    one result per item, in order (`waited_s`: how long the oldest item waited), or raises, which
    fails every item of that batch. An item whose waiter gave up (cancelled, e.g. by a timeout)
    before its batch went out is dropped from it.
    """

    def __init__(
        self, send: Callable[[list[Item], float], Awaitable[list[Result]]], window_s: float
    ):
        self._send = send
        self._window_s = window_s
        self._queue: list[tuple[Item, asyncio.Future[Result], float]] = []
        self._in_flight: list[asyncio.Future[Result]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._last_sent = -math.inf

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.monotonic()))
        if self._drainer is None:
            # A task, so this caller only waits for its own result; it starts on the loop's next
            # turn, which also lets admissions arriving in this turn join the first batch.
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                wait_s = self._last_sent + self._window_s - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                batch = [(item, f, t) for item, f, t in self._queue if not f.done()]
                self._queue = []
                if not batch:
                    continue
                self._last_sent = time.monotonic()
                self._in_flight = [f for _, f, _ in batch]
                try:
                    results = await self._send(
                        [item for item, _, _ in batch], self._last_sent - batch[0][2]
                    )
                except Exception as exc:  # noqa: BLE001 - every item of the batch gets it
                    for future in self._in_flight:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for future, result in zip(self._in_flight, results):
                        if not future.done():
                            future.set_result(result)
                self._in_flight = []
        finally:
            self._drainer = None
            # Only when the drainer itself is cancelled (its loop closing): nobody will answer.
            for future in [*self._in_flight, *(f for _, f, _ in self._queue)]:
                future.cancel()
            self._queue, self._in_flight = [], []


class _Shard:
    """One limiter shard as one client sees it: its handle, its reconnect backoff, its queue."""

    def __init__(
        self, index: int, config: RateLimitConfig, app_name: str | None, metrics: LimiterMetrics
    ):
        self.index = index
        self._config = config
        self._app_name = app_name
        self._metrics = metrics
        self._tags = {"shard": str(index)}
        self.handle: ActorHandle | None = None
        self._retry_at = 0.0
        self.queue: Coalescer[tuple[str, float], Decision] = Coalescer(
            self._call, config.coalesce_window_s
        )

    def lookup(self) -> ActorHandle:
        """Find the shard, or create it if it is gone; blocking (it talks to the GCS)."""
        app_name = self._app_name or serve.get_replica_context().app_name
        # @ray.remote makes the class an ActorClass, which mypy cannot see.
        handle = RateLimitActor.options(  # type: ignore[attr-defined]
            name=actor_name(app_name, self.index),
            namespace=ACTOR_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(self._config)
        # An actor that already existed may hold an older configuration (a redeploy with new
        # policies). Fire and forget: Ray runs one caller's calls in order, so this lands before
        # this client's first acquisition.
        handle.configure.remote(self._config)
        return handle

    async def _actor(self) -> ActorHandle:
        # Only this shard's Coalescer calls this, one batch at a time: no lock needed.
        if self.handle is None:
            if time.monotonic() < self._retry_at:
                raise LimiterUnavailable(f"reconnecting to limiter shard {self.index}")
            try:
                self.handle = await asyncio.wait_for(
                    asyncio.to_thread(self.lookup), timeout=self._config.timeout_s
                )
            except (asyncio.TimeoutError, RayActorError, ValueError) as exc:
                self._retry_at = time.monotonic() + RECONNECT_BACKOFF_S
                raise LimiterUnavailable(f"lookup of shard {self.index} failed: {exc!r}") from None
        return self.handle

    async def _call(self, batch: list[tuple[str, float]], waited_s: float) -> list[Decision]:
        actor = await self._actor()
        started = time.perf_counter()
        self._metrics.call_admissions.observe(len(batch), tags=self._tags)
        self._metrics.coalesce_wait_ms.observe(waited_s * 1000.0, tags=self._tags)
        try:
            # asyncio.timeout, not wait_for: no extra task around the ObjectRef on every call.
            async with asyncio.timeout(self._config.timeout_s):
                decisions: list[Decision] = await actor.try_acquire_many.remote(batch)
            return decisions
        except TimeoutError:
            # The call may still land later and take tokens: erring towards the client is fine.
            raise LimiterUnavailable(
                f"shard {self.index}: no answer within {self._config.timeout_s} s"
            ) from None
        except RayActorError as exc:
            # Dead or restarting: look it up again on the next call; get_if_exists creates it
            # anew if it is gone for good (ray.kill) and returns it if Ray restarted it.
            self.handle = None
            raise LimiterUnavailable(
                f"shard {self.index} unavailable: {type(exc).__name__}"
            ) from None
        finally:
            self._metrics.latency_ms.observe(
                (time.perf_counter() - started) * 1000.0, tags=self._tags
            )


class RateLimitClient:
    """What the ingress (and the job runner) call; one per replica.

    `app_name` defaults to the application of the replica the client runs in, so a client built
    in `build_app` and passed to a deployment resolves it where it runs. It pickles as its
    configuration, so a bound method such as `client.acquire_wait` can be passed to a deployment.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        app_name: str | None = None,
        decide: Callable[[str, float], Awaitable[Decision]] | None = None,
    ):
        self._config = config
        # Where acquisitions are decided: the limiter actors, or (tests of the HTTP edge) one
        # in-process `RateLimiter` behind the same admission rules.
        self._decide_here = decide
        self._app_name = app_name
        self._last_warning = -WARN_EVERY_S
        self._metrics = LimiterMetrics()
        self._shards = [_Shard(i, config, app_name, self._metrics) for i in range(config.shards)]

    def __reduce__(self) -> tuple[Any, ...]:
        return (RateLimitClient, (self._config, self._app_name))

    @property
    def unit(self) -> str:
        return "pairs" if self._config.cost == "pairs" else "requests"

    def cost_of(self, pairs: int) -> float:
        """The cost of one request or job chunk of `pairs` pairs under the configured cost mode."""
        return float(pairs) if self._config.cost == "pairs" else 1.0

    def connect(self, wait_s: float = 30.0) -> bool:
        """Find or create every shard and wait until they answer. Blocking: for replica start-up,
        so the first requests after a deploy are limited instead of meeting starting actors."""
        ready = True
        deadline = time.monotonic() + wait_s
        for shard in self._shards:
            try:
                handle = shard.lookup()
                ray.get(
                    handle.__ray_ready__.remote(), timeout=max(0.0, deadline - time.monotonic())
                )
            except (GetTimeoutError, RayActorError, ValueError) as exc:
                log.warning(
                    "rate limiter shard %d not ready at start (%s); will retry per request",
                    shard.index,
                    exc,
                )
                ready = False
                continue
            shard.handle = handle
        return ready

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
            decision = await self._decide(key, cost)
        except LimiterUnavailable as exc:
            if self._config.fail_mode == "closed":
                raise ServiceUnavailable(
                    "the rate limiter is unavailable; retry after 1 second", retry_after_s=1
                ) from None
            self._note_fail_open(exc)
            return None
        if decision.exceeds_burst:  # the actor already runs a newer policy with a smaller burst
            raise self._above_burst(cost, decision.quota)
        tags = {"client": metric_label(key)}
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
        does not answer: fail_mode open admits the rest; closed waits until the shard is back.
        """
        key = key or ANONYMOUS_KEY
        burst = policy_for(self._config, key)[1].burst
        remaining = float(cost)
        while remaining > TOLERANCE:
            piece = min(remaining, burst)
            try:
                decision = await self._decide(key, piece)
            except LimiterUnavailable as exc:
                if self._config.fail_mode == "open":
                    self._note_fail_open(exc)
                    return
                await asyncio.sleep(RECONNECT_BACKOFF_S)
                continue
            if decision.allowed:
                self._metrics.admitted.inc(piece, tags={"client": metric_label(key)})
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

    async def _decide(self, key: str, cost: float) -> Decision:
        """One acquisition through its shard's queue, answered within `timeout_s` or raising
        LimiterUnavailable."""
        check_cost(cost)  # here, so one bad cost cannot fail a batch of other clients' requests
        if self._decide_here is not None:
            return await self._decide_here(key, cost)
        shard = self._shards[shard_of(key, len(self._shards))]
        try:
            async with asyncio.timeout(self._config.timeout_s):
                return await shard.queue.submit((key, cost))
        except TimeoutError:
            raise LimiterUnavailable(
                f"shard {shard.index}: no answer within {self._config.timeout_s} s"
            ) from None

    def _note_fail_open(self, exc: LimiterUnavailable) -> None:
        self._metrics.fail_open.inc()
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("rate limiter unavailable (%s): admitting unlimited (fail_mode=open)", exc)
