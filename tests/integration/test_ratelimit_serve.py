"""The shared rate limit over real HTTP: two ingress replicas, one limiter actor or three shards.

Each scenario sends from its own loopback addresses (127.0.0.x), so each has its own buckets: the
client key is the address when auth is off (and the API key's name when it is on). Clients poll
every ~0.1 s after a 429 instead of honouring Retry-After: these tests measure how exactly the
limiter hands out tokens, not how polite a client is. No bound here is a stopwatch: each is what
the token arithmetic allows over the time the test itself observed.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import ray
from live import wait_for

from serve_app.config import RateLimitConfig
from serve_app.core.errors import RateLimited, ServiceUnavailable
from serve_app.core.keys import hash_key
from serve_app.core.ratelimit import shard_of
from serve_app.deployments.limiter import (
    ACTOR_NAMESPACE,
    RateLimitClient,
    actor_name,
    remove_limiters,
)

pytestmark = pytest.mark.ray

RATE = 40.0  # pairs per second
# 3 s of tokens: a stall of the request path shorter than that (this machine is shared) loses
# none of them, so the lower bound measures the limiter, not the scheduler.
BURST = 120.0
POLICY = f'"default";q={BURST:.0f};w={BURST / RATE:.0f}'  # the RateLimit-Policy header
TEXTS, LABELS = ["one text", "another text"], ["a", "b", "c", "d"]
COST = len(TEXTS) * len(LABELS)  # 8 pairs per request: 5 admitted requests per second
CLIENTS = 16
POLL_S = 0.1
SLOW = "127.0.0.3"  # has an override: 4 pairs/s, burst 16
SHARDS = 3  # the sharded app's, "rl3" (fail_mode closed)
CLOSED_APP, JOBS_APP = "closed-client-test", "jobs-wait-test"  # limiters used without an app

RATE_LIMIT_HEADER = re.compile(r'^"default";r=\d+;t=\d+$')


@dataclass
class Answer:
    address: str
    sent: float
    received: float
    status: int
    headers: httpx.Headers
    body: dict


@dataclass
class Load:
    start: float
    answers: list[Answer] = field(default_factory=list)

    def of(self, address: str) -> Load:
        return Load(self.start, [a for a in self.answers if a.address == address])

    def admitted(self, since: float = 0.0) -> float:
        return COST * sum(a.status == 200 for a in self.answers if a.sent >= since)

    def last_received(self) -> float:
        return max(a.received for a in self.answers)

    def summary(self) -> str:
        """For failure messages: what came back, and how long answers took."""
        statuses = Counter(a.status for a in self.answers)
        unlimited = sum(a.status == 200 and "RateLimit" not in a.headers for a in self.answers)
        slowest = max(a.received - a.sent for a in self.answers)
        return f"statuses={dict(statuses)} admitted_unlimited={unlimited} slowest={slowest:.2f}s"


def addresses_on_distinct_shards(count: int, first: int, avoid_shard_0: bool = False) -> list[str]:
    """Loopback addresses from 127.0.0.<first> on, whose keys land in distinct shards of "rl3"
    (and all in the one shard of "rl")."""
    chosen: dict[int, str] = {}
    for n in range(first, 255):
        address = f"127.0.0.{n}"
        shard = shard_of(address, SHARDS)
        if shard not in chosen and not (avoid_shard_0 and shard == 0):
            chosen[shard] = address
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError("not enough loopback addresses")


@pytest.fixture(scope="module", autouse=True)
def _kill_limiters_at_the_end(serve_instance: str) -> Iterator[None]:
    # Limiter actors are detached and outlive their apps: free the processes of the two this
    # module makes without an app for the rest of the session (conftest deletes the apps').
    yield
    for app in (CLOSED_APP, JOBS_APP):
        remove_limiters(app)


def limited_app(deploy_app, name: str, **rate_limit: object) -> str:
    return deploy_app(
        name,
        ingress={"num_replicas": 2, "num_cpus": 0.1},
        rate_limit={
            "enabled": True,
            "default": {"rate": RATE, "burst": BURST},
            "overrides": {SLOW: {"rate": 4, "burst": 16}},
            # Generous: this machine's 2 cores are shared, and a slow answer must not count
            # as an outage in the tests that measure the limit itself.
            "timeout_s": 5.0,
            **rate_limit,
        },
    )


@pytest.fixture(scope="module")
def rl_url(deploy_app) -> str:
    return limited_app(deploy_app, "rl")  # one limiter actor, fail_mode open


@pytest.fixture(scope="module")
def rl3_url(deploy_app) -> str:
    return limited_app(deploy_app, "rl3", shards=SHARDS, fail_mode="closed")


def client_from(address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(
        local_address=address, limits=httpx.Limits(max_connections=CLIENTS)
    )
    return httpx.AsyncClient(transport=transport, timeout=60)


async def load(
    url: str,
    addresses: list[str],
    seconds: float,
    load_state: Load | None = None,
    stop: asyncio.Event | None = None,
) -> Load:
    """CLIENTS concurrent clients, shared out over `addresses`, for `seconds` or until `stop` is
    set; every answer is recorded."""
    state = load_state or Load(start=time.monotonic())
    deadline = time.monotonic() + seconds
    stop = stop or asyncio.Event()
    body = {"texts": TEXTS, "labels": LABELS}

    async def one_client(client: httpx.AsyncClient, address: str) -> None:
        while (sent := time.monotonic()) < deadline and not stop.is_set():
            response = await client.post(f"{url}/v1/classify", json=body)
            state.answers.append(
                Answer(
                    address,
                    sent,
                    time.monotonic(),
                    response.status_code,
                    response.headers,
                    response.json(),
                )
            )
            if response.status_code != 200:
                await asyncio.sleep(POLL_S * random.uniform(0.5, 1.5))

    clients = {address: client_from(address) for address in addresses}
    try:
        await asyncio.gather(
            *(
                one_client(clients[addresses[i % len(addresses)]], addresses[i % len(addresses)])
                for i in range(CLIENTS)
            )
        )
    finally:
        for client in clients.values():
            await client.aclose()
    return state


def assert_refusals_are_well_formed(answers: list[Answer]) -> None:
    for a in answers:
        if a.status != 429:
            continue
        assert int(a.headers["Retry-After"]) >= 1
        assert a.headers["RateLimit-Policy"] == POLICY
        assert RATE_LIMIT_HEADER.match(a.headers["RateLimit"]), a.headers["RateLimit"]
        assert a.body["error"]["type"] == "rate_limited"


def assert_limited_exactly(state: Load, end: float) -> None:
    """One key's answers: at most what its bucket allows, and (nearly) all of it."""
    statuses = {a.status for a in state.answers}
    assert statuses <= {200, 429} and 429 in statuses, state.summary()
    assert_refusals_are_well_formed(state.answers)
    # Every admitted answer carries the policy and what is left: none was admitted unlimited.
    for a in state.answers:
        if a.status == 200:
            assert a.headers.get("RateLimit-Policy") == POLICY, state.summary()
            assert RATE_LIMIT_HEADER.match(a.headers["RateLimit"])
    admitted = state.admitted()
    # Upper bound over the whole run: every admission happened before the last answer arrived.
    elapsed = end - state.start
    assert admitted <= BURST + RATE * elapsed + 1e-6, (admitted, elapsed, state.summary())
    # Lower bound over the time clients were asking: tokens that accrued while someone was
    # polling were handed out (only the last partial request's worth may be left over).
    asking = max(a.sent for a in state.answers) - state.start
    assert admitted >= 0.9 * (BURST + RATE * asking), (admitted, asking, state.summary())


@pytest.mark.parametrize("app", ["rl_url", "rl3_url"], ids=["shards-1", "shards-3"])
async def test_sixteen_clients_on_two_replicas_get_the_limit_and_no_more(
    app: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(app)
    # Two keys, 8 clients each: in different shards of "rl3", in the one actor of "rl".
    addresses = addresses_on_distinct_shards(2, first=20)
    state = await load(url, addresses, seconds=3.0)
    for address in addresses:
        assert_limited_exactly(state.of(address), end=state.last_received())


async def test_a_client_that_waits_retry_after_succeeds(rl_url: str) -> None:
    url = f"{rl_url}/v1/classify"
    async with client_from(SLOW) as client:
        drain = await client.post(url, json={"texts": ["a"] * 4, "labels": LABELS})
        assert drain.status_code == 200, drain.text
        assert drain.headers["RateLimit-Policy"] == f'"{SLOW}";q=16;w=4'
        assert drain.headers["RateLimit"].startswith(f'"{SLOW}";r=0;')

        refused = await client.post(url, json={"texts": TEXTS, "labels": LABELS})
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert retry_after in (1, 2)  # 8 pairs at 4/s, less the time since the drain, rounded up
        await asyncio.sleep(retry_after)
        again = await client.post(url, json={"texts": TEXTS, "labels": LABELS})
        assert again.status_code == 200, again.text


async def test_a_request_above_the_burst_is_refused_for_good_not_429(rl_url: str) -> None:
    async with client_from(SLOW) as client:
        too_big = await client.post(
            f"{rl_url}/v1/classify", json={"texts": ["a"] * 5, "labels": LABELS}
        )
    assert too_big.status_code == 413
    error = too_big.json()["error"]
    assert error["type"] == "limit_exceeded"
    assert "POST /v1/jobs" in error["message"] and "16" in error["message"]
    assert "Retry-After" not in too_big.headers


def kill_limiter(app: str, shard: int = 0) -> bytes:
    """Kill one limiter shard of the app and return once it is dead: ray.kill only asks, and a
    call sent right after it may still be answered by the dying actor."""
    actor = ray.get_actor(actor_name(app, shard), namespace=ACTOR_NAMESPACE)
    ray.kill(actor)

    def dead() -> bool:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return True
        return False

    wait_for(dead, 30, "the limiter actor to die after ray.kill", every_s=0.05)
    return actor._actor_id.binary()


async def wait_for_new_limiter(
    app: str, old_id: bytes, shard: int = 0, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            actor = ray.get_actor(actor_name(app, shard), namespace=ACTOR_NAMESPACE)
            if actor._actor_id.binary() != old_id:
                await actor.__ray_ready__.remote()
                return
        except (ValueError, ray.exceptions.RayActorError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the limiter actor did not come back")


# How long the load goes on once a killed limiter is back: a second for every replica to find
# it, then a new actor's whole burst (3 s of tokens) is drained by 16 clients in well under a
# second, and what follows must be limited exactly (a fixed 14 s of load did the same, slower).
AFTER_BACK_S = 4.0


def assert_limited_again(state: Load, since: float) -> None:
    after = Load(state.start, [a for a in state.answers if a.sent >= since])
    assert after.answers and {a.status for a in after.answers} <= {200, 429}, after.summary()
    assert any(a.status == 429 for a in after.answers), after.summary()
    assert all("RateLimit" in a.headers for a in after.answers if a.status == 200)
    assert_refusals_are_well_formed(after.answers)
    window = state.last_received() - since
    assert after.admitted() <= BURST + RATE * window + 1e-6, (after.admitted(), window)


async def test_killing_the_limiter_fails_open_then_the_limit_holds_again(rl_url: str) -> None:
    state, stop = Load(start=time.monotonic()), asyncio.Event()
    running = asyncio.ensure_future(
        load(rl_url, ["127.0.0.4"], seconds=60.0, load_state=state, stop=stop)
    )
    await asyncio.sleep(2.0)
    killed_at = time.monotonic()
    old_id = await asyncio.to_thread(kill_limiter, "rl")
    await wait_for_new_limiter("rl", old_id)
    back_at = time.monotonic()
    await asyncio.sleep(AFTER_BACK_S)
    stop.set()
    await running

    assert {a.status for a in state.answers} <= {200, 429}  # fail open: never a 5xx
    # Requests in flight when the actor died are part of the outage too.
    outage = [a for a in state.answers if a.received >= killed_at and a.sent <= back_at]
    assert any(a.status == 200 and "RateLimit" not in a.headers for a in outage), (
        "no request was admitted unlimited while the limiter was down"
    )
    # Once it is back (and a second for every replica to find it): limited again.
    assert_limited_again(state, since=back_at + 1.0)


async def test_killing_one_shard_fails_its_keys_closed_and_spares_the_others(
    rl3_url: str,
) -> None:
    # Not shard 0, so the shards named after it are the ones found again.
    hit, spared = addresses_on_distinct_shards(2, first=40, avoid_shard_0=True)
    shard = shard_of(hit, SHARDS)
    state, stop = Load(start=time.monotonic()), asyncio.Event()
    running = asyncio.ensure_future(
        load(rl3_url, [hit, spared], seconds=60.0, load_state=state, stop=stop)
    )
    await asyncio.sleep(2.0)
    killed_at = time.monotonic()
    old_id = await asyncio.to_thread(kill_limiter, "rl3", shard)
    await wait_for_new_limiter("rl3", old_id, shard)
    back_at = time.monotonic()
    await asyncio.sleep(AFTER_BACK_S)
    stop.set()
    await running
    hit_load, spared_load = state.of(hit), state.of(spared)

    # Fail closed: the away shard's keys get 503 with Retry-After, never an unlimited 200.
    assert {a.status for a in hit_load.answers} <= {200, 429, 503}, hit_load.summary()
    assert all("RateLimit" in a.headers for a in hit_load.answers if a.status == 200)
    outage = [a for a in hit_load.answers if a.received >= killed_at and a.sent <= back_at]
    unavailable = [a for a in outage if a.status == 503]
    assert unavailable, hit_load.summary()
    for a in unavailable:
        assert a.headers["Retry-After"] == "1" and a.body["error"]["type"] == "unavailable"
    # The other shard's key never noticed: answered, and limited exactly, throughout.
    assert {a.status for a in spared_load.answers} <= {200, 429}, spared_load.summary()
    assert any(a.status == 200 and killed_at <= a.sent <= back_at for a in spared_load.answers)
    assert all("RateLimit" in a.headers for a in spared_load.answers if a.status == 200)
    elapsed = state.last_received() - state.start
    assert spared_load.admitted() <= BURST + RATE * elapsed + 1e-6, spared_load.summary()
    # The shard is back: exact limiting again for its keys.
    assert_limited_again(hit_load, since=back_at + 1.0)


def client_config(fail_mode: str) -> RateLimitConfig:
    return RateLimitConfig(
        enabled=True, default={"rate": 20, "burst": 10}, fail_mode=fail_mode, timeout_s=2.0
    )


async def test_fail_closed_refuses_with_503_and_finds_the_actor_again(serve_instance: str) -> None:
    app = CLOSED_APP
    client = RateLimitClient(client_config("closed"), app_name=app)
    assert client.connect()
    assert (await client.admit("k", 1)).allowed
    old_id = await asyncio.to_thread(kill_limiter, app)
    with pytest.raises(ServiceUnavailable) as refused:
        await client.admit("k", 1)
    assert refused.value.retry_after_s == 1
    deadline = time.monotonic() + 60
    while True:
        try:
            decision = await client.admit("k", 1)
            break
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "the client never found the limiter again"
            await asyncio.sleep(0.2)
    assert decision is not None and decision.allowed
    new = ray.get_actor(actor_name(app), namespace=ACTOR_NAMESPACE)
    assert new._actor_id.binary() != old_id


async def test_jobs_wait_for_tokens_in_burst_sized_pieces(serve_instance: str) -> None:
    client = RateLimitClient(client_config("closed"), app_name=JOBS_APP)
    assert client.connect()
    started = time.monotonic()
    await client.acquire_wait("job-owner", 35)  # 10 at once, then 25 more at 20/s
    # A floor, not a stopwatch: 25 tokens at 20/s cannot come sooner, however fast the machine.
    assert time.monotonic() - started >= 1.2
    # The bucket is empty now: an interactive request from the same client is refused.
    with pytest.raises(RateLimited):
        await client.admit("job-owner", 5)


async def test_no_limit_when_not_enabled(zsc_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{zsc_url}/v1/classify", json={"text": "a", "labels": "x,y"})
    assert answer.status_code == 200
    assert "RateLimit" not in answer.headers and "RateLimit-Policy" not in answer.headers


# Per-key buckets: with API keys on, the bucket is the key's name, whatever the address.
API_KEYS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "gold": "gold-secret-3"}


@pytest.fixture(scope="module")
def keys_url(deploy_app) -> str:
    return deploy_app(
        "rl-keys",
        auth={"api_key_hashes": {name: hash_key(key) for name, key in API_KEYS.items()}},
        rate_limit={
            "enabled": True,
            "cost": "requests",
            # No token comes back during the module: every answer is the burst's.
            "default": {"rate": 0.01, "burst": 3},
            "overrides": {"gold": {"rate": 0.01, "burst": 6}},
            "timeout_s": 5.0,
        },
    )


async def classify_as(
    client: httpx.AsyncClient, url: str, name: str, texts: list[str]
) -> httpx.Response:
    return await client.post(
        f"{url}/v1/classify",
        json={"texts": texts, "labels": LABELS},
        headers={"Authorization": f"Bearer {API_KEYS[name]}"},
    )


def remaining(response: httpx.Response) -> int:
    match = re.search(r";r=(\d+);", response.headers["RateLimit"])
    assert match, response.headers
    return int(match.group(1))


async def test_each_api_key_has_its_own_bucket_and_a_request_costs_one(keys_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:  # one address for every key
        # 8 pairs each, above the burst of 3 had the cost been pairs (that would be a 413).
        alice = [await classify_as(client, keys_url, "alice", TEXTS) for _ in range(4)]
        assert [a.status_code for a in alice] == [200, 200, 200, 429], [a.text for a in alice]
        assert [remaining(a) for a in alice[:3]] == [2, 1, 0]
        assert alice[0].headers["RateLimit-Policy"] == '"default";q=3;w=300'
        assert int(alice[3].headers["Retry-After"]) >= 1
        # Bob, from the same address, has his own full bucket; 1 pair or 24, a request is 1.
        small = await classify_as(client, keys_url, "bob", ["one"])
        big = await classify_as(client, keys_url, "bob", ["one text"] * 6)
        assert small.status_code == big.status_code == 200, big.text
        assert [remaining(small), remaining(big)] == [2, 1]


async def test_an_override_keyed_by_a_key_name_applies_to_that_key(keys_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        gold = [await classify_as(client, keys_url, "gold", TEXTS) for _ in range(7)]
    assert [g.status_code for g in gold] == [200] * 6 + [429], [g.text for g in gold]
    assert gold[0].headers["RateLimit-Policy"] == '"gold";q=6;w=600'
    assert [remaining(g) for g in gold[:6]] == [5, 4, 3, 2, 1, 0]
    assert gold[6].json()["error"]["type"] == "rate_limited"
