"""Jobs shared fairly, on both stores (a real SQLite file, a real PostgreSQL server), without Ray:
the scheduler with a scripted score function. Tenants take turns, each has its active-job quota,
finished jobs expire, the store has a bound, a full disk pauses the runner, and a tenant's webhook
secrets rotate with both signatures on one delivery."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from serve_app.config import JobsConfig
from serve_app.core.errors import ClientError
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification, TextResult
from serve_app.jobs import scheduler as scheduler_module
from serve_app.jobs import webhooks
from serve_app.jobs.opening import open_store
from serve_app.jobs.outbox import Outbox
from serve_app.jobs.scheduler import JobScheduler
from serve_app.jobs.store import JobStore


def prepared(n: int, width: int = 1) -> PreparedRequest:
    return PreparedRequest(
        texts=[f"text {i} " + "x" * width for i in range(n)],
        labels=["a", "b"],
        hypothesis_template="This example is {}.",
        multi_label=False,
    )


async def scripted_score(request: PreparedRequest) -> Classification:
    """A slow model: the same fixed answer for every text, after a pause per chunk."""
    await asyncio.sleep(0.01)
    return Classification(
        model="scripted",
        results=[TextResult(t, ["a", "b"], [0.75, 0.25]) for t in request.texts],
        pairs=len(request.texts) * 2,
    )


def scheduler(store: JobStore, **jobs: Any) -> JobScheduler:
    config = JobsConfig(**{"chunk_texts": 2, "max_parallel_chunks": 1, "lease_s": 5.0, **jobs})
    return JobScheduler(store, config, scripted_score, is_transient=lambda exc: False)


async def submit(s: JobScheduler, owner: str | None, n: int, width: int = 1) -> str:
    job = await s.submit(prepared(n, width), owner, owner, None, None, None)
    return job.id


async def run_until_done(s: JobScheduler, owners: dict[str, str | None], limit_s: float = 60):
    """Run the scheduler until every job in `owners` (id -> owner) has ended; their views."""
    loop = asyncio.create_task(s.run())
    try:
        async with asyncio.timeout(limit_s):
            while True:
                jobs = {i: await s.get(i, o, 1, None) for i, o in owners.items()}
                if all(j is not None and j.state in ("succeeded", "failed") for j in jobs.values()):
                    return jobs
                await asyncio.sleep(0.05)
    finally:
        loop.cancel()


async def test_tenants_take_turns(store: JobStore) -> None:
    """Tenant B's small job, submitted after tenant A's five large ones, ends before A's last."""
    s = scheduler(store)
    a_jobs = [await submit(s, "alice", 12) for _ in range(5)]  # 6 chunks each
    b_job = await submit(s, "bob", 2)  # 1 chunk
    jobs = await run_until_done(s, {**dict.fromkeys(a_jobs, "alice"), b_job: "bob"})
    assert all(j.state == "succeeded" for j in jobs.values())
    a_last = max(jobs[i].finished_at for i in a_jobs)
    a_first = min(jobs[i].finished_at for i in a_jobs)
    # Round robin over tenants: bob's only chunk runs second, before alice's first job ends.
    assert jobs[b_job].finished_at < a_first < a_last


async def test_tenants_see_only_their_own_jobs(store: JobStore) -> None:
    s = scheduler(store)
    mine = await submit(s, "alice", 2)
    assert await s.get(mine, "bob", 1, None) is None  # the route answers 404
    assert await s.cancel(mine, "bob") is None
    assert (await s.list("bob", 10, None)).data == []
    assert [j.id for j in (await s.list("alice", 10, None)).data] == [mine]
    assert (await s.get(mine, "alice", 1, None)).state == "queued"


async def test_active_job_quota_per_tenant(store: JobStore) -> None:
    s = scheduler(store, max_active_per_tenant=2)
    first = await submit(s, "alice", 2)
    await submit(s, "alice", 2)
    with pytest.raises(ClientError) as refused:
        await submit(s, "alice", 2)
    assert refused.value.status_code == 429 and refused.value.type == "too_many_active_jobs"
    assert "max_active_per_tenant = 2" in refused.value.message
    await submit(s, "bob", 2)  # another tenant has its own quota
    await s.cancel(first, "alice")  # an ended job frees its place
    await submit(s, "alice", 2)


async def test_finished_jobs_expire_and_say_so(store: JobStore) -> None:
    s = scheduler(store, ttl_s=100.0)
    old = await submit(s, "alice", 4)
    await run_until_done(s, {old: "alice"})
    young = await submit(s, "alice", 2)
    ended = (await s.get(old, "alice", 1, None)).finished_at
    # Before the TTL: nothing to delete; after it, the job and every row of it are gone.
    assert store.expire_jobs(100.0, limit=10, now=ended + 99) == 0
    assert store.expire_jobs(100.0, limit=10, now=ended + 101) == 1
    with pytest.raises(ClientError) as gone:
        await s.get(old, "alice", 1, None)
    assert gone.value.status_code == 404 and gone.value.type == "job_expired"
    assert await s.get(old, "bob", 1, None) is None  # another tenant learns nothing
    with store._tx() as db:  # type: ignore[attr-defined]
        for table in ("jobs", "chunks", "leases"):
            column = "id" if table == "jobs" else "job_id"
            row = db.one(f"SELECT count(*) AS n FROM {table} WHERE {column} = ?", (old,))
            assert row is not None and row["n"] == 0, table
    assert (await s.get(young, "alice", 1, None)).state == "queued"  # untouched


async def test_the_store_bound_refuses_a_job_that_would_pass_it(store: JobStore) -> None:
    s = scheduler(store, max_store_bytes=20_000, ttl_s=1.0)
    with pytest.raises(ClientError) as too_large:
        await submit(s, "alice", 10, width=5000)
    assert too_large.value.status_code == 413 and too_large.value.type == "job_too_large"
    first = await submit(s, "alice", 10, width=500)  # about 13 kB of the 20
    with pytest.raises(ClientError) as full:
        await submit(s, "bob", 10, width=500)
    assert full.value.status_code == 413 and full.value.type == "job_store_full"
    assert "jobs.ttl_s" in full.value.message
    await run_until_done(s, {first: "alice"})
    ended = (await s.get(first, "alice", 1, None)).finished_at
    assert store.expire_jobs(1.0, limit=10, now=ended + 2) == 1  # space returns
    await submit(s, "bob", 10, width=500)


async def test_a_full_disk_pauses_the_runner_until_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite only: PRAGMA max_page_count makes a real SQLITE_FULL (PostgreSQL's DiskFull maps to
    the same StoreFull in postgres_store.py)."""
    monkeypatch.setattr(scheduler_module, "PAUSE_S", 0.1)
    store = open_store(f"sqlite:///{tmp_path / 'full.sqlite3'}")
    pauses: list[bool] = []
    config = JobsConfig(chunk_texts=2, max_parallel_chunks=2, lease_s=1.0)
    s = JobScheduler(store, config, scripted_score, lambda e: False, on_pause=pauses.append)
    job = await submit(s, "alice", 8, width=20_000)  # each chunk's results need new pages
    db = store._db  # type: ignore[attr-defined]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    loop = asyncio.create_task(s.run())
    try:
        async with asyncio.timeout(30):
            while not pauses:
                await asyncio.sleep(0.05)
            assert pauses == [True] and s.paused
            await asyncio.sleep(0.5)  # still full: still paused, no second error
            assert pauses == [True]
            db.execute("PRAGMA max_page_count = 1073741823")
            while (await s.get(job, "alice", 1, None)).state != "succeeded":
                await asyncio.sleep(0.05)
    finally:
        loop.cancel()
    assert pauses == [True, False] and not s.paused
    store.close()


class _Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


async def test_a_rotation_signs_with_both_secrets(store: JobStore) -> None:
    """During a rotation a receiver that knows only the new secret and one that knows only the
    old both verify the same delivery; a tenant without its own secret gets the server's."""
    new, old, server = webhooks.new_secret(), webhooks.new_secret(), webhooks.new_secret()
    config = JobsConfig(
        chunk_texts=2,
        webhook={"allow_hosts": ["127.0.0.1"], "tenant_secrets": {"alice": [new, old]}},
    )
    assert "whsec" not in repr(config.webhook.tenant_secrets)  # SecretStr: never logged

    def secrets(tenant: str) -> list[str]:
        return webhooks.tenant_secrets(config.webhook, server, tenant)

    receiver = _Receiver()
    outbox = Outbox(store, config.webhook, secrets)
    s = JobScheduler(store, config, scripted_score, lambda e: False, secrets=secrets)
    s.on_terminal = outbox.wake
    owners = {}
    for owner in ("alice", "bob"):
        job = await s.submit(prepared(2), owner, owner, receiver.url, None, None)
        owners[job.id] = owner
    loops = [asyncio.create_task(s.run()), asyncio.create_task(outbox.run())]
    try:
        async with asyncio.timeout(30):
            while len(receiver.requests) < 2:
                await asyncio.sleep(0.05)
    finally:
        for loop in loops:
            loop.cancel()
        receiver.server.shutdown()
    deliveries = {
        owners[json.loads(body)["data"]["id"]]: (h, body) for h, body in receiver.requests
    }
    alice_headers, alice_body = deliveries["alice"]
    assert len(alice_headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):  # each receiver knows one secret
        Webhook(secret).verify(alice_body, alice_headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(server).verify(alice_body, alice_headers)
    bob_headers, bob_body = deliveries["bob"]
    Webhook(server).verify(bob_body, bob_headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(bob_body, bob_headers)


def test_sqlite_keeps_one_runner_on_the_head_postgres_runs_several_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serve_app.app import HEAD_NODE_RESOURCE, StartupError, job_runner_options
    from serve_app.config import AppConfig

    monkeypatch.delenv("ZSC_JOBS_STORE", raising=False)
    sqlite = job_runner_options(AppConfig(model="m", jobs={"db_path": "/data/j.sqlite3"}))
    assert sqlite["num_replicas"] == 1
    assert HEAD_NODE_RESOURCE in sqlite["ray_actor_options"]["resources"]
    with pytest.raises(StartupError, match="PostgreSQL"):
        job_runner_options(AppConfig(model="m", jobs={"runners": 2}))
    pg = AppConfig(model="m", jobs={"store": "postgresql://zsc@db/zsc", "runners": 3})
    assert job_runner_options(pg) == {"num_replicas": 3, "ray_actor_options": {"num_cpus": 0}}
    # The Secret's env var decides, as the runners themselves read it.
    monkeypatch.setenv("ZSC_JOBS_STORE", "postgresql://zsc:pw@db/zsc")
    assert job_runner_options(AppConfig(model="m", jobs={"runners": 2}))["num_replicas"] == 2
    with pytest.raises(ValueError, match="exclusive"):
        AppConfig(model="m", jobs={"store": "sqlite:///a", "db_path": "b"})
