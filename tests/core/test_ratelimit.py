"""The token bucket's arithmetic, on an injected clock (no Ray, no sleeping)."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import subprocess
import sys
from typing import Any

import pytest

from serve_app.config import RateLimitConfig
from serve_app.core.errors import RateLimited
from serve_app.core.ratelimit import Decision, RateLimiter, sf_number, sf_string, shard_of


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(
    rate: float, burst: float, overrides: dict[str, Any] | None = None, **kw: Any
) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    config = RateLimitConfig(
        enabled=True, default={"rate": rate, "burst": burst}, overrides=overrides or {}
    )
    return RateLimiter(config, clock=clock, **kw), clock


def test_a_new_client_starts_with_a_full_bucket() -> None:
    rl, _ = limiter(rate=10, burst=30)
    first = rl.try_acquire("a", 30)
    assert first.allowed and first.remaining == 0
    refused = rl.try_acquire("a", 1)
    assert not refused.allowed and refused.remaining == 0


def test_refill_at_rate_up_to_burst() -> None:
    rl, clock = limiter(rate=10, burst=30)
    rl.try_acquire("a", 30)
    clock.advance(0.5)
    assert not rl.try_acquire("a", 6).allowed  # 5 tokens so far
    assert rl.try_acquire("a", 5).allowed
    clock.advance(3600)
    decision = rl.try_acquire("a", 1)
    assert decision.remaining == pytest.approx(29)  # capped at the burst, not 36,000


def test_burst_is_shared_by_every_request_of_a_client() -> None:
    rl, _ = limiter(rate=1, burst=10)
    admitted = sum(rl.try_acquire("a", 3).allowed for _ in range(10))
    assert admitted == 3  # 9 of 10 tokens; the 4th request would need 12
    assert rl.try_acquire("b", 10).allowed  # another client has its own bucket


def test_fractional_costs_and_rates() -> None:
    rl, clock = limiter(rate=0.5, burst=2)
    assert [rl.try_acquire("a", 0.75).allowed for _ in range(3)] == [True, True, False]
    assert rl.try_acquire("a", 0.5).allowed  # 0.5 left
    clock.advance(0.5)  # +0.25
    decision = rl.try_acquire("a", 0.5)
    assert not decision.allowed
    assert decision.wait_s == pytest.approx(0.5)
    clock.advance(0.5)
    assert rl.try_acquire("a", 0.5).allowed


@pytest.mark.parametrize(
    ("rate", "cost", "retry_after"),
    [(3.0, 4.0, 2), (3.0, 3.0, 1), (3.0, 0.1, 1), (0.5, 2.0, 4), (100.0, 150.0, 2)],
)
def test_retry_after_is_whole_seconds_rounded_up(
    rate: float, cost: float, retry_after: int
) -> None:
    rl, _ = limiter(rate=rate, burst=max(cost, 1.0))
    rl.try_acquire("a", max(cost, 1.0))  # drain
    decision = rl.try_acquire("a", cost)
    assert not decision.allowed
    assert decision.wait_s == pytest.approx(cost / rate)
    assert decision.retry_after_s == retry_after
    assert decision.headers()["Retry-After"] == str(retry_after)


def test_waiting_exactly_the_advertised_time_always_passes() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        rate, burst = rng.uniform(0.01, 1000), rng.uniform(1, 1000)
        rl, clock = limiter(rate=rate, burst=burst)
        rl.try_acquire("a", rng.uniform(0.5, 1) * burst)
        cost = rng.uniform(0.01, 1) * burst
        decision = rl.try_acquire("a", cost)
        if decision.allowed:
            continue
        clock.advance(decision.wait_s)  # the exact float, as jobs wait
        assert rl.try_acquire("a", cost).allowed, (rate, burst, cost)


def test_waiting_retry_after_passes_and_one_second_less_does_not() -> None:
    rl, clock = limiter(rate=3, burst=9)
    rl.try_acquire("a", 9)
    decision = rl.try_acquire("a", 7)  # 7/3 s away: Retry-After 3
    assert decision.retry_after_s == 3
    clock.advance(decision.retry_after_s - 1)
    assert not rl.try_acquire("a", 7).allowed
    clock.advance(1)
    assert rl.try_acquire("a", 7).allowed


def test_a_cost_above_the_burst_can_never_pass() -> None:
    rl, clock = limiter(rate=10, burst=20)
    decision = rl.try_acquire("a", 21)
    assert not decision.allowed and decision.exceeds_burst
    assert math.isinf(decision.wait_s) and decision.retry_after_s is None
    assert "Retry-After" not in decision.headers()  # no promise that a retry will pass
    clock.advance(3600)
    assert not rl.try_acquire("a", 21).allowed
    assert rl.try_acquire("a", 20).allowed  # and the refusal took nothing from the bucket


def test_overrides_apply_per_client_and_name_the_policy() -> None:
    rl, _ = limiter(rate=1, burst=5, overrides={"gold": {"rate": 100, "burst": 500}})
    gold = rl.try_acquire("gold", 400)
    assert gold.allowed and gold.policy == "gold" and gold.quota == 500
    other = rl.try_acquire("10.0.0.7", 400)
    assert other.exceeds_burst and other.policy == "default" and other.quota == 5
    assert gold.headers()["RateLimit-Policy"] == '"gold";q=500;w=5'


def test_header_strings_follow_the_structured_field_draft() -> None:
    rl, _ = limiter(rate=100, burst=100)
    decision = rl.try_acquire("a", 58)
    assert decision.headers() == {
        "RateLimit-Policy": '"default";q=100;w=1',
        "RateLimit": '"default";r=42;t=1',  # 58 tokens to refill at 100/s: 0.58 s, rounded up
    }
    refused = rl.try_acquire("a", 50)
    assert refused.headers() == {
        "RateLimit-Policy": '"default";q=100;w=1',
        "RateLimit": '"default";r=42;t=1',
        "Retry-After": "1",
    }


def test_header_numbers_round_the_right_way() -> None:
    rl, _ = limiter(rate=3, burst=10)
    decision = rl.try_acquire("a", 2.5)  # 7.5 left, 2.5/3 s to full, 10/3 s to refill
    assert decision.headers()["RateLimit-Policy"] == '"default";q=10;w=4'
    assert decision.headers()["RateLimit"] == '"default";r=7;t=1'
    assert sf_number(2.5) == "2.5" and sf_number(200.0) == "200" and sf_number(0.1234) == "0.123"


def test_policy_names_are_escaped_as_sf_strings() -> None:
    assert sf_string('a"b\\c') == '"a\\"b\\\\c"'
    assert sf_string("clé\n") == '"cl??"'


def test_idle_full_buckets_are_evicted_without_changing_any_answer() -> None:
    rl, clock = limiter(rate=10, burst=10, sweep_interval_s=5)
    for i in range(1000):
        rl.try_acquire(f"client-{i}", 10)
    rl.try_acquire("busy", 10)
    assert len(rl) == 1001
    clock.advance(1)  # every bucket full again: evictable, yet
    rl.try_acquire("busy", 10)
    assert len(rl) == 1001  # only swept every 5 s
    clock.advance(4.5)
    rl.try_acquire("busy", 10)  # sweeps first (the 1000 full ones go), then drains "busy"
    assert len(rl) == 1
    assert rl.try_acquire("client-3", 10).allowed  # an evicted client starts full, as it was


def test_a_bucket_that_is_not_full_survives_the_sweep() -> None:
    rl, clock = limiter(rate=1, burst=100, sweep_interval_s=5)
    rl.try_acquire("slow", 100)
    clock.advance(6)
    rl.try_acquire("other", 1)
    decision = rl.try_acquire("slow", 7)
    assert not decision.allowed and decision.remaining == pytest.approx(6)


def test_configure_keeps_earned_tokens_up_to_the_new_burst() -> None:
    rl, clock = limiter(rate=10, burst=100)
    rl.try_acquire("a", 40)  # 60 left
    rl.configure(RateLimitConfig(enabled=True, default={"rate": 1, "burst": 50}))
    decision = rl.try_acquire("a", 50)  # 60 earned, capped to the new burst: 50
    assert decision.allowed and decision.quota == 50
    clock.advance(2)
    assert rl.try_acquire("a", 2).allowed and not rl.try_acquire("a", 0.5).allowed
    # Earned tokens below the new burst are kept, not topped up to it: 80 used leaves 20.
    rl, clock = limiter(rate=10, burst=100)
    rl.try_acquire("b", 80)
    rl.configure(RateLimitConfig(enabled=True, default={"rate": 1, "burst": 50}))
    assert not rl.try_acquire("b", 21).allowed and rl.try_acquire("b", 20).allowed


def test_a_clock_that_steps_back_does_not_drain_the_bucket() -> None:
    rl, clock = limiter(rate=10, burst=10)
    rl.try_acquire("a", 5)
    clock.advance(-100)
    assert rl.try_acquire("a", 5).allowed


@pytest.mark.parametrize("cost", [0, -1, math.inf, math.nan])
def test_costs_must_be_positive_and_finite(cost: float) -> None:
    rl, _ = limiter(rate=10, burst=10)
    with pytest.raises(ValueError):
        rl.try_acquire("a", cost)


def test_rate_limited_error_pickles_with_its_headers() -> None:
    error = pickle.loads(pickle.dumps(RateLimited("slow down", {"Retry-After": "3"})))
    assert error.status_code == 429 and error.type == "rate_limited"
    assert error.headers == {"Retry-After": "3"} and str(error) == "slow down"


def test_a_batch_gets_the_decisions_sequential_calls_give_in_order() -> None:
    """Mixed keys, costs (fractional, a whole burst, above the burst) and an override, batch after
    batch as the clock moves: try_acquire_many against try_acquire one by one on a twin."""
    rng = random.Random(16)
    overrides = {"gold": {"rate": 50, "burst": 40}}
    batched, clock = limiter(rate=5, burst=12, overrides=overrides, sweep_interval_s=3)
    twin = RateLimitConfig(enabled=True, default={"rate": 5, "burst": 12}, overrides=overrides)
    sequential = RateLimiter(twin, clock=clock, sweep_interval_s=3)
    keys = ["a", "b", "c", "gold", "10.0.0.1"]
    allowed = refused = 0
    for _ in range(300):
        batch = [
            (rng.choice(keys), rng.choice([0.5, 1.0, 2.5, 4.0, 12.0, 13.0, rng.uniform(0.1, 9)]))
            for _ in range(rng.randint(1, 40))
        ]
        expected: list[Decision] = [sequential.try_acquire(key, cost) for key, cost in batch]
        assert batched.try_acquire_many(batch) == expected
        assert len(batched) == len(sequential)
        allowed += sum(d.allowed for d in expected)
        refused += sum(not d.allowed for d in expected)
        clock.advance(rng.choice([0.0, 0.0, 0.01, 0.3, 1.0, 4.0]))
    assert allowed > 500 and refused > 500  # both kinds of answer were compared, many times


def test_a_batch_decides_a_key_twice_in_arrival_order() -> None:
    rl, _ = limiter(rate=1, burst=10)
    decisions = rl.try_acquire_many([("a", 6), ("b", 10), ("a", 6), ("a", 4), ("b", 1)])
    assert [d.allowed for d in decisions] == [True, True, False, True, False]
    assert [d.remaining for d in decisions] == [4, 0, 4, 0, 0]


def test_a_batch_with_a_malformed_cost_takes_no_tokens() -> None:
    rl, _ = limiter(rate=1, burst=10)
    with pytest.raises(ValueError):
        rl.try_acquire_many([("a", 10), ("b", 10), ("c", math.nan)])
    assert len(rl) == 0
    assert rl.try_acquire_many([("a", 10), ("b", 10)])[1].allowed


def test_a_key_lands_in_the_same_shard_in_every_process() -> None:
    """Python salts str hashes per process; two ingress replicas must still agree."""
    keys = [f"client-{i}" for i in range(200)] + ["127.0.0.1", "alice", "clé", ""]
    here = [shard_of(key, 3) for key in keys]
    program = (
        "import json, sys; from serve_app.core.ratelimit import shard_of; "
        "print(json.dumps([shard_of(k, 3) for k in json.loads(sys.stdin.read())]))"
    )
    for seed in ("1", "2"):
        child = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps(keys),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(child.stdout) == here
    assert set(here) == {0, 1, 2}  # and it spreads
    assert all(shard_of(key, 1) == 0 for key in keys)
