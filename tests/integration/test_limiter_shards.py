"""The limiter's shards and its coalescing client on real Ray (no Serve app: clients by name).

Each shard counts the calls and admissions it answered (`RateLimitActor.stats`), so these tests
see how many Ray calls the client made, which keys each shard holds, and when one is new.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest
import ray

from serve_app.config import RateLimitConfig
from serve_app.core.errors import RateLimited, ServiceUnavailable
from serve_app.core.ratelimit import shard_of
from serve_app.deployments.limiter import (
    ACTOR_NAMESPACE,
    RateLimitClient,
    actor_name,
    limiter_actor_names,
    remove_limiters,
)

pytestmark = pytest.mark.ray

COALESCE_APP, SHARDS_APP, CRASH_APP = "coalesce-test", "shards-test", "crash-test"


@pytest.fixture(scope="module", autouse=True)
def _remove_limiters_at_the_end(serve_instance: str) -> Iterator[None]:
    yield
    for app in (COALESCE_APP, SHARDS_APP, CRASH_APP):
        remove_limiters(app)


def config(shards: int = 1, **kw: object) -> RateLimitConfig:
    # A rate so slow that no token comes back during a test: every answer is the burst's.
    return RateLimitConfig.model_validate(
        {
            "enabled": True,
            "default": {"rate": 0.001, "burst": 10},
            "timeout_s": 30.0,
            "shards": shards,
            **kw,
        }
    )


def pid_of(actor: Any) -> int:
    return cast(int, ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))


def stats(app: str, shard: int = 0) -> dict[str, int]:
    actor = ray.get_actor(actor_name(app, shard), namespace=ACTOR_NAMESPACE)
    return cast(dict[str, int], ray.get(actor.stats.remote()))


async def attempt(client: RateLimitClient, key: str, cost: float) -> bool:
    try:
        return (await client.admit(key, cost)) is not None
    except RateLimited:
        return False


async def test_concurrent_admissions_share_calls_and_are_decided_in_arrival_order(
    serve_instance: str,
) -> None:
    client = RateLimitClient(config(), app_name=COALESCE_APP)
    assert client.connect()
    before = stats(COALESCE_APP)
    results = await asyncio.gather(*(attempt(client, "k", 1) for _ in range(40)))
    # The burst of 10 went to the first 10 callers, as 40 calls one after another would give.
    assert results == [True] * 10 + [False] * 30
    after = stats(COALESCE_APP)
    assert after["admissions"] - before["admissions"] == 40
    assert after["calls"] - before["calls"] <= 4, (before, after)  # 40 without coalescing


async def test_each_key_lives_in_one_shard_and_every_replica_finds_it_there(
    serve_instance: str,
) -> None:
    shards = 3
    keys = [f"client-{i}" for i in range(30)]
    first, second = (RateLimitClient(config(shards), app_name=SHARDS_APP) for _ in range(2))
    assert first.connect() and second.connect()
    assert limiter_actor_names(SHARDS_APP) == sorted(actor_name(SHARDS_APP, i) for i in range(3))

    assert all(await asyncio.gather(*(attempt(first, key, 10) for key in keys)))
    held = Counter(shard_of(key, shards) for key in keys)
    assert [stats(SHARDS_APP, i)["buckets"] for i in range(shards)] == [held[i] for i in range(3)]
    assert len(held) == shards  # every shard holds some of them
    # Another client (another replica) reaches the same buckets: every key is spent.
    assert not any(await asyncio.gather(*(attempt(second, key, 1) for key in keys)))

    assert remove_limiters(SHARDS_APP) == shards
    assert limiter_actor_names(SHARDS_APP) == []


async def test_a_crashed_shard_is_found_again_and_the_others_never_notice(
    serve_instance: str,
) -> None:
    shards = 3
    client = RateLimitClient(config(shards, fail_mode="closed", timeout_s=5.0), app_name=CRASH_APP)
    assert client.connect()
    by_shard = {shard_of(f"key-{i}", shards): f"key-{i}" for i in range(50)}
    crashed, spared = by_shard[1], by_shard[2]
    assert await attempt(client, crashed, 10) and await attempt(client, spared, 10)

    victim = ray.get_actor(actor_name(CRASH_APP, 1), namespace=ACTOR_NAMESPACE)
    old_pid = pid_of(victim)
    ray.kill(victim, no_restart=False)  # a crash: Ray restarts it in place (max_restarts=-1)

    outcomes: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The spared shard answers throughout, from the bucket it had: still spent.
        assert not await attempt(client, spared, 1)
        try:
            outcomes.append("admitted" if await attempt(client, crashed, 10) else "refused")
        except ServiceUnavailable:
            outcomes.append("503")
            await asyncio.sleep(0.1)
            continue
        if outcomes[-1] == "admitted":
            break
    assert outcomes and outcomes[-1] == "admitted", outcomes  # a restart starts its buckets full
    # The same actor (Ray restarted it in place, max_restarts=-1), in a new process.
    found = ray.get_actor(actor_name(CRASH_APP, 1), namespace=ACTOR_NAMESPACE)
    assert found._actor_id == victim._actor_id and pid_of(victim) != old_pid
    assert stats(CRASH_APP, 1)["buckets"] == 1  # found again, and it holds only what came after
