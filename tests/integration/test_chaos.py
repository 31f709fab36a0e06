"""Chaos under steady load: kill a Classifier replica, an Ingress replica, the rate limiter actor
and the job runner in turn, and nothing accepted is lost.

Two loads run side by side. Raw HTTP: every request gets an answer, its result or a 503 with
Retry-After (the ingress maps a replica that died under it to that), with one exception that is
Serve's own: when an *ingress* replica dies, Serve's HTTP proxy answers the requests that were
inside it with a plain-text 500 (no app code runs there to say otherwise); those are bounded by
what was in flight at the kill. Through `ZeroShotClient`: every call returns its results, because
the client resends what did not complete (every zsc request is safe to resend). Jobs submitted
before and during the kills all complete, with every result.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
import ray
from live import SERVE_NAMESPACE, Outcome, SteadyLoad, ZscClientLoad, replica_names, wait_for

from serve_app.deployments.limiter import ACTOR_NAMESPACE, actor_name

pytestmark = pytest.mark.ray

APP = "chaos"
CLIENTS = 4  # raw HTTP
ZSC_CLIENTS = 2  # through ZeroShotClient
BODY = {
    "texts": ["The striker scored in the final minute."],
    "labels": ["sports", "finance", "art"],
}
JOB_TEXTS = [f"Item {i}: prices rose as the team won the election." for i in range(300)]
REPLICAS = {"Classifier": 2, "Ingress": 2, "JobRunner": 1}
RECOVERY_S = 180


@pytest.fixture(scope="module")
def url(deploy_app, tmp_path_factory: pytest.TempPathFactory) -> str:
    return deploy_app(
        APP,
        classifier={"num_cpus": 0.4, "num_replicas": REPLICAS["Classifier"]},
        ingress={"num_cpus": 0.05, "num_replicas": REPLICAS["Ingress"]},
        # On, with limits nobody reaches: the limiter actor is on every request's path.
        rate_limit={"enabled": True, "default": {"rate": 1e6, "burst": 1e6}, "timeout_s": 2.0},
        jobs={
            "db_path": str(tmp_path_factory.mktemp("chaos") / "jobs.sqlite3"),
            "chunk_texts": 20,
            "max_parallel_chunks": 2,
        },
    )


def call_until_answered(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """A well-behaved client: resend after Retry-After on a 503 (a replica was replaced)."""
    for _ in range(60):
        response = httpx.request(method, url, timeout=60, **kwargs)
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get("retry-after", "1")))
    raise AssertionError(f"{method} {url}: still 503 after a minute")


def submit_jobs(url: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = call_until_answered(
            "POST", f"{url}/v1/jobs", json={"texts": JOB_TEXTS, "labels": ["sports", "politics"]}
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def kill_replica(deployment: str) -> str:
    name = sorted(replica_names(APP, deployment))[0]
    ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE))
    return name


def replaced(deployment: str, killed: str) -> bool:
    names = replica_names(APP, deployment)
    return killed not in names and len(names) == REPLICAS[deployment]


def limiter_id() -> str | None:
    try:
        return ray.get_actor(actor_name(APP), namespace=ACTOR_NAMESPACE)._actor_id.hex()
    except ValueError:  # not there (killed, not yet recreated)
        return None


def answers_again(load: SteadyLoad, what: str) -> float:
    """Wait until 10 requests sent after this call have succeeded; return when they had."""
    since = time.monotonic()
    wait_for(lambda: load.ok_since(since) >= 10, RECOVERY_S, f"answers again after {what}")
    return time.monotonic()


def test_nothing_accepted_is_lost_when_parts_die(url: str) -> None:
    jobs = submit_jobs(url, 2)
    kills: dict[str, float] = {}
    recovered: dict[str, float] = {}
    with (
        SteadyLoad(f"{url}/v1/classify", BODY, CLIENTS) as load,
        ZscClientLoad(url, BODY, ZSC_CLIENTS) as zsc_load,
    ):
        wait_for(lambda: load.ok_since(0) >= 20, 120, "steady load")

        for deployment in ("Classifier", "Ingress"):
            kills[deployment] = time.monotonic()
            killed = kill_replica(deployment)
            wait_for(
                lambda d=deployment, k=killed: replaced(d, k), RECOVERY_S, f"a new {deployment}"
            )
            recovered[deployment] = answers_again(load, f"killing a {deployment} replica")

        before = limiter_id()
        assert before is not None
        kills["limiter"] = time.monotonic()
        ray.kill(ray.get_actor(actor_name(APP), namespace=ACTOR_NAMESPACE))
        # The next request that finds it dead creates it anew (get_if_exists, see limiter.py).
        wait_for(lambda: limiter_id() not in (None, before), RECOVERY_S, "a new limiter actor")
        recovered["limiter"] = answers_again(load, "killing the limiter")

        jobs += submit_jobs(url, 2)
        wait_for(lambda: job_states(url, jobs)["running"] >= 1, 120, "a job running")
        kills["JobRunner"] = time.monotonic()
        killed = kill_replica("JobRunner")
        wait_for(lambda: replaced("JobRunner", killed), RECOVERY_S, "a new JobRunner")
        recovered["JobRunner"] = answers_again(load, "killing the JobRunner")

    report(load.outcomes, kills)
    report(zsc_load.outcomes, kills, "through ZeroShotClient")
    failed_calls = [o for o in zsc_load.outcomes if o.status != 200]
    assert not failed_calls, f"ZeroShotClient calls without results: {failed_calls[:5]}"
    assert len(zsc_load.outcomes) >= 20
    lost = [o for o in load.outcomes if not acceptable(o, kills["Ingress"], recovered["Ingress"])]
    assert not lost, f"{len(lost)} requests without a result or a retry: {lost[:5]}"
    proxy_500s = [o for o in load.outcomes if o.status == 500]
    # Only what was inside the killed ingress (or routed to it before the proxy learnt).
    assert len(proxy_500s) <= 2 * CLIENTS, proxy_500s

    # Every job completes, with every result, whatever died under it.
    wait_for(lambda: job_states(url, jobs)["succeeded"] == len(jobs), 600, "every job to succeed")
    for job_id in jobs:
        job = call_until_answered("GET", f"{url}/v1/jobs/{job_id}").json()
        assert job["progress"]["completed_texts"] == len(JOB_TEXTS)
        assert len(job["results"]) == len(JOB_TEXTS) and None not in job["results"]


def job_states(url: str, ids: list[str]) -> Counter:
    return Counter(call_until_answered("GET", f"{url}/v1/jobs/{i}").json()["state"] for i in ids)


def acceptable(outcome: Outcome, ingress_killed_at: float, ingress_recovered_at: float) -> bool:
    if outcome.status == 200 or outcome.says_retry():
        return True
    # Serve's proxy answers 500 for requests inside an ingress replica that died: answered after
    # the kill, sent before the service was seen answering again (ordering, not a time bound).
    in_flight = outcome.ended >= ingress_killed_at and outcome.started <= ingress_recovered_at
    return outcome.status == 500 and in_flight


def report(outcomes: list[Outcome], kills: dict[str, float], via: str = "raw HTTP") -> None:
    start = min(o.started for o in outcomes)
    kinds = Counter((o.status, o.error) for o in outcomes)
    print(f"\nchaos ({via}): {len(outcomes)} requests, outcomes {dict(kinds)}")
    times = sorted(kills.items(), key=lambda item: item[1])
    for i, (what, at) in enumerate(times):
        until = times[i + 1][1] if i + 1 < len(times) else float("inf")
        after = [o for o in outcomes if at <= o.ended < until]
        bad = Counter((o.status, o.error) for o in after if o.status != 200)
        slowest = max((o.latency_s for o in after), default=0.0)
        print(
            f"  kill {what} at +{at - start:.1f}s: {len(after)} answers until the next kill, "
            f"non-200 {dict(bad)}, slowest {slowest:.2f}s"
        )
