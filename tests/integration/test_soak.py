"""Soak: ten minutes at about 80% of measured capacity, through the whole request path (API
keys, the shared rate limiter, Ingress, Classifier), with no errors, the offered rate answered,
and flat memory.

Kept out of `make test` (marked slow); `make soak` runs it. `ZSC_SOAK_S` shortens or lengthens
the run. Capacity is measured first, in the same session, with closed-loop clients; the soak
then offers 80% of it from paced clients. The resident memory (RSS, read by each process from
/proc) of Serve's proxy, every replica and the limiter actor is sampled throughout; growth is
measured from the end of warm-up to the end.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter

import pytest
from live import Outcome, SteadyLoad, actor_rss_mb, serving_actors, wait_for

from serve_app.deployments.limiter import ACTOR_NAMESPACE, actor_name
from serve_app.http.middleware.auth import hash_key

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "soak"
KEY = "soak-test-key"
SOAK_S = float(os.environ.get("ZSC_SOAK_S", "600"))
MEASURE_S = 30.0
WARMUP_S = min(120.0, SOAK_S / 5)
SAMPLE_EVERY_S = 15.0
LOAD_FRACTION = 0.8
CLIENTS = 8
BODY = {
    "texts": [
        "The central bank raised interest rates again.",
        "Our team won the final after extra time.",
    ],
    "labels": ["finance", "sports", "politics"],
}
# Growth of a process's RSS from the end of warm-up to the end that fails the soak.
MAX_GROWTH_MB = 64.0
# The soak promises the service sustains 80% of its measured capacity: answered requests per
# second over the whole run must reach this share of the offered rate. Clients are paced and
# catch up after a slow spell (a late client sends at once), so a service that keeps up answers
# nearly all of them (share ~1.0) even on a noisy shared machine; only one that falls behind
# for minutes (a leak that slows it, a stalled batch loop, a limiter that queues) drops below.
MIN_ACHIEVED_SHARE = 0.75


def sample_rss() -> dict[str, float]:
    """RSS in MB of every process a request passes through: proxy, replicas, limiter actor."""
    sizes = {label: actor_rss_mb(name, "serve") for label, name in serving_actors(APP).items()}
    sizes["limiter"] = actor_rss_mb(actor_name(APP), ACTOR_NAMESPACE)
    return sizes


def throughput(outcomes: list[Outcome], since: float) -> float:
    done = [o for o in outcomes if o.started >= since and o.status == 200]
    if not done:
        return 0.0
    return len(done) / (max(o.ended for o in done) - since)


# Past the suite's 600 s per-test timeout: the soak itself is SOAK_S, plus start and capacity.
@pytest.mark.timeout(SOAK_S + 600)
def test_soak_at_80_percent_of_capacity(deploy_app) -> None:
    url = deploy_app(
        APP,
        auth={"api_key_hashes": {"soak": hash_key(KEY)}},
        rate_limit={"enabled": True, "default": {"rate": 1e6, "burst": 1e6}, "timeout_s": 2.0},
    )
    endpoint = f"{url}/v1/classify"
    headers = {"Authorization": f"Bearer {KEY}"}

    # Capacity: closed-loop clients, as fast as answers come back.
    with SteadyLoad(endpoint, BODY, CLIENTS, headers) as probe:
        wait_for(lambda: probe.done >= CLIENTS, 120, "the first answers")
        measure_from = time.monotonic()
        time.sleep(MEASURE_S)
    capacity = throughput(probe.outcomes, measure_from)
    assert capacity > 0 and all(o.status == 200 for o in probe.outcomes)
    offered = LOAD_FRACTION * capacity

    samples: list[tuple[float, dict[str, float]]] = []
    with SteadyLoad(endpoint, BODY, CLIENTS, headers, interval_s=CLIENTS / offered) as load:
        start = time.monotonic()
        next_sample = start
        while time.monotonic() - start < SOAK_S:
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - start, sample_rss()))
                next_sample += SAMPLE_EVERY_S
            time.sleep(1.0)  # the soak's clock, not a wait for an outcome
        samples.append((time.monotonic() - start, sample_rss()))

    outcomes = load.outcomes
    statuses = Counter((o.status, o.error) for o in outcomes)
    latencies = sorted(o.latency_s for o in outcomes)
    answered = sum(1 for o in outcomes if o.status == 200)
    achieved = answered / SOAK_S
    growth = rss_growth(samples)
    print(
        f"\nsoak: capacity {capacity:.1f} req/s (closed loop, {CLIENTS} clients); offered "
        f"{offered:.1f} req/s for {SOAK_S:.0f} s; achieved {achieved:.1f} req/s; "
        f"{len(outcomes)} requests {dict(statuses)}; latency p50 "
        f"{1000 * latencies[len(latencies) // 2]:.0f} ms p99 "
        f"{1000 * latencies[int(len(latencies) * 0.99)]:.0f} ms"
    )
    for process, (first, last, peak) in growth.items():
        print(
            f"  {process}: RSS {first:.0f} MB after warm-up -> {last:.0f} MB at the end "
            f"({last - first:+.1f} MB), peak {peak:.0f} MB"
        )

    assert statuses == Counter({(200, None): len(outcomes)}), statuses
    assert achieved >= MIN_ACHIEVED_SHARE * offered, (
        f"achieved {achieved:.1f} req/s of the {offered:.1f} offered"
    )
    for process, (first, last, _) in growth.items():
        assert last - first < MAX_GROWTH_MB, f"{process} grew {last - first:.1f} MB"


def rss_growth(
    samples: list[tuple[float, dict[str, float]]],
) -> dict[str, tuple[float, float, float]]:
    """Per process: median RSS of the first samples after warm-up, of the last samples, peak."""
    settled = [rss for at, rss in samples if at >= WARMUP_S]
    growth = {}
    for process in settled[0]:
        series = [rss[process] for rss in settled if process in rss]
        growth[process] = (
            statistics.median(series[:3]),
            statistics.median(series[-3:]),
            max(series),
        )
    return growth
