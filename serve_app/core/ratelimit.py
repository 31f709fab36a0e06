"""Token buckets per client: the rate limit's arithmetic, with no Ray in it.

A client's bucket holds up to `burst` tokens and refills at `rate` tokens per second; a request
passes when the bucket holds its cost. The clock is injected, so every rule here (refill, burst,
fractional costs, the rounding of Retry-After) is tested in microseconds without sleeping.
`serve_app.deployments.limiter` puts one `RateLimiter` in each of `shards` Ray actors that every
ingress replica consults: `shard_of` sends each key to exactly one of them, and
`try_acquire_many` decides a coalesced batch of acquisitions in one call.

Headers follow draft-ietf-httpapi-ratelimit-headers in its structured-field form:
`RateLimit-Policy: "default";q=<burst>;w=<seconds to refill from empty>` and
`RateLimit: "default";r=<tokens left>;t=<seconds until the bucket is full again>`.
"""

from __future__ import annotations

import ipaddress
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serve_app.config import RateLimitConfig, RateLimitPolicy

DEFAULT_POLICY = "default"
# Callers without an API key or an address (e.g. a job submitted without either) share one bucket.
ANONYMOUS_KEY = "anonymous"


def metric_label(key: str) -> str:
    """What a client key is called in metrics: the API key's name (a bounded set, configured),
    or "anonymous" for a key that is a client's address, so label values stay bounded."""
    try:
        ipaddress.ip_address(key)
    except ValueError:
        return key
    return ANONYMOUS_KEY


# Float slack: a client that waits exactly the advertised time must pass, even when
# tokens + rate * wait lands a few ulps short of the cost.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Decision:
    """The answer to one acquisition; everything the HTTP layer needs to render it."""

    allowed: bool
    cost: float
    remaining: float
    wait_s: float
    """Seconds until the bucket holds `cost`: 0 when allowed, infinite when cost > burst."""
    reset_s: float
    """Seconds until the bucket is full again."""
    policy: str
    quota: float
    """The policy's burst (the draft's q)."""
    window_s: float
    """Seconds to refill an empty bucket (the draft's w)."""

    @property
    def exceeds_burst(self) -> bool:
        return self.cost > self.quota + TOLERANCE

    @property
    def retry_after_s(self) -> int | None:
        """Whole seconds, rounded up, until a retry of this cost passes; None if it never will."""
        if self.allowed or math.isinf(self.wait_s):
            return None
        return max(1, math.ceil(self.wait_s))

    def headers(self) -> dict[str, str]:
        name = sf_string(self.policy)
        remaining = math.floor(self.remaining + TOLERANCE)
        out = {
            "RateLimit-Policy": f"{name};q={sf_number(self.quota)};w={math.ceil(self.window_s)}",
            "RateLimit": f"{name};r={remaining};t={math.ceil(self.reset_s)}",
        }
        retry_after = self.retry_after_s
        if retry_after is not None:
            out["Retry-After"] = str(retry_after)
        return out


def sf_string(value: str) -> str:
    """An RFC 8941 sf-string: printable ASCII only, with quote and backslash escaped."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sf_number(value: float) -> str:
    """An sf-integer when whole, else an sf-decimal (at most three fractional digits)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def check_cost(cost: float) -> None:
    if not (cost > 0 and math.isfinite(cost)):
        raise ValueError(f"cost must be a positive finite number, got {cost!r}")


def shard_of(key: str, shards: int) -> int:
    """The shard that holds a client key's bucket: the same in every process and every run.

    CRC-32, not `hash()`: Python salts str hashes per process, so two ingress replicas would
    send one key to different shards and double its limit."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


def policy_for(config: RateLimitConfig, key: str) -> tuple[str, RateLimitPolicy]:
    """The policy that governs a client key, and its public name (the override's key or
    "default")."""
    override = config.overrides.get(key)
    if override is not None:
        return key, override
    return DEFAULT_POLICY, config.default


class TokenBucket:
    """One client's bucket. Starts full: a client never seen (or evicted when full) is the same."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, policy: RateLimitPolicy, now: float):
        self.rate = policy.rate
        self.burst = policy.burst
        self.tokens = policy.burst
        self.updated = now

    def refill(self, now: float) -> None:
        # max(): a clock that steps back must not drain the bucket.
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)

    def time_until(self, cost: float) -> float:
        """Seconds until the (refilled) bucket holds `cost`; infinite when cost > burst."""
        if cost > self.burst + TOLERANCE:
            return math.inf
        return max(0.0, (cost - self.tokens) / self.rate)

    def apply(self, policy: RateLimitPolicy, now: float) -> None:
        """Adopt a new policy, keeping the tokens earned so far (capped by the new burst)."""
        self.refill(now)
        self.rate = policy.rate
        self.burst = policy.burst
        self.tokens = min(self.tokens, policy.burst)


class RateLimiter:
    """Per-client token buckets under a default policy plus per-client overrides.

    Not thread-safe by design: its one owner (a Ray actor running one call at a time) serialises
    every acquisition, which is what makes the shared limit exact.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval_s: float = 60.0,
    ):
        self._config = config
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._buckets: dict[str, TokenBucket] = {}
        self._last_sweep = clock()

    def __len__(self) -> int:
        return len(self._buckets)

    def configure(self, config: RateLimitConfig) -> None:
        now = self._clock()
        self._config = config
        for key, bucket in self._buckets.items():
            bucket.apply(policy_for(config, key)[1], now)

    def try_acquire(self, key: str, cost: float) -> Decision:
        """Take `cost` tokens from the client's bucket if it holds them; never waits."""
        return self.try_acquire_many([(key, cost)])[0]

    def try_acquire_many(self, requests: Sequence[tuple[str, float]]) -> list[Decision]:
        """Decide many acquisitions at one instant, in order: exactly the decisions that
        `try_acquire` called once for each, one after another, would give at that instant.

        Every cost is checked before any is decided, so a malformed batch takes no tokens."""
        for _, cost in requests:
            check_cost(cost)
        now = self._clock()
        self._maybe_sweep(now)
        return [self._decide(key, cost, now) for key, cost in requests]

    def _decide(self, key: str, cost: float, now: float) -> Decision:
        name, policy = policy_for(self._config, key)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(policy, now)
        bucket.refill(now)
        wait_s = bucket.time_until(cost)
        allowed = wait_s <= TOLERANCE
        if allowed:
            bucket.tokens = max(0.0, bucket.tokens - cost)
            wait_s = 0.0
        return Decision(
            allowed=allowed,
            cost=cost,
            remaining=bucket.tokens,
            wait_s=wait_s,
            reset_s=(bucket.burst - bucket.tokens) / bucket.rate,
            policy=name,
            quota=bucket.burst,
            window_s=bucket.burst / bucket.rate,
        )

    def _maybe_sweep(self, now: float) -> None:
        # A bucket that has refilled to full is indistinguishable from a new one, so dropping it
        # loses nothing; memory is then bounded by the clients active within the last refill
        # time (or sweep interval), not by every client ever seen.
        if now - self._last_sweep < self._sweep_interval_s:
            return
        self._last_sweep = now
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst
        ]
        for key in full:
            del self._buckets[key]
