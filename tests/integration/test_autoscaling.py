"""Autoscaling: under load the Classifier grows past one running replica, and shrinks back to
one when the load stops.

The app is deployed with `classifier.autoscaling` (min 1, max 2, target 2 ongoing requests per
replica) and short delays and metric intervals, so Serve reacts within seconds instead of the
production defaults (30 s up, 10 min down). Concurrent HTTP clients keep far more than
2 x max_replicas requests in flight at the Classifier; the test watches the deployment's replica
states in `serve.status()` while the load runs, then stops the load and waits for one replica.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from live import SteadyLoad, wait_for
from ray import serve

pytestmark = pytest.mark.ray

APP = "autoscale"
MIN_REPLICAS, MAX_REPLICAS = 1, 2
AUTOSCALING = {
    "min_replicas": MIN_REPLICAS,
    "max_replicas": MAX_REPLICAS,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 3.0,
    "look_back_period_s": 2.0,
    "metrics_interval_s": 0.5,
}
# 8 texts x 4 labels = 32 pairs a request: the Classifier's share of each request dominates, so
# the requests in flight pile up there (what the autoscaler counts), not in the ingress.
BODY = {
    "texts": [f"Report {i}: the council approved the new stadium budget." for i in range(8)],
    "labels": ["sports", "politics", "finance", "weather"],
}
CLIENTS = 16  # requests in flight: 8 per replica even at the maximum, well above the target
# The autoscaler decides within seconds; a new replica then starts a worker process and loads
# the model, which takes 20-30 s on a busy 2-core machine. These bounds are only for a defect.
GROW_TIMEOUT_S = 180.0
SHRINK_TIMEOUT_S = 120.0


def classifier_states() -> dict[str, int]:
    """Replica counts of the Classifier by state, e.g. {"RUNNING": 2, "STARTING": 1}."""
    deployment = serve.status().applications[APP].deployments["Classifier"]
    return {
        str(getattr(state, "value", state)): n
        for state, n in deployment.replica_states.items()
        if n
    }


def test_classifier_scales_up_under_load_and_back_down(deploy_app) -> None:
    url = deploy_app(
        APP,
        classifier={"num_cpus": 0.1, "autoscaling": AUTOSCALING},
        # Unbounded admission: this test is about the autoscaler, and its 16 x 32 pairs in flight
        # are past the default overload bound (test_overload_serve covers that bound).
        ingress={"num_cpus": 0.1, "max_scoring_pairs": 0},
    )
    assert classifier_states() == {"RUNNING": MIN_REPLICAS}

    seen: list[tuple[float, dict[str, int]]] = []  # (seconds into the load, states) on change

    def record() -> dict[str, int]:
        states = classifier_states()
        if not seen or seen[-1][1] != states:
            seen.append((round(time.monotonic() - started, 1), states))
            print(f"{seen[-1][0]} s: {states}")  # pytest shows it when the test fails
        return states

    with SteadyLoad(f"{url}/v1/classify", BODY, CLIENTS) as load:
        wait_for(lambda: load.done >= CLIENTS, 60, "the load to start")
        started = time.monotonic()
        # Running, not starting: only a RUNNING replica is in the routing table and takes work.
        wait_for(
            lambda: record().get("RUNNING", 0) > MIN_REPLICAS,
            GROW_TIMEOUT_S,
            f"more than {MIN_REPLICAS} RUNNING Classifier replica under load",
            0.5,
        )
        print(f"grew after {time.monotonic() - started:.1f} s of load")

    statuses = Counter(o.status for o in load.outcomes)
    print(f"requests under load: {dict(statuses)}")
    assert set(statuses) == {200}, statuses
    # Serve asked for replicas (starting or running) within the bounds, never more.
    assert max(sum(states.values()) for _, states in seen) <= MAX_REPLICAS, seen

    # No load: the ongoing-request average falls to 0 and Serve removes the extra replicas.
    stopped = time.monotonic()
    wait_for(
        lambda: record() == {"RUNNING": MIN_REPLICAS},
        SHRINK_TIMEOUT_S,
        f"the Classifier to shrink back to {MIN_REPLICAS} RUNNING replica",
        0.5,
    )
    print(f"shrank to {MIN_REPLICAS} in {time.monotonic() - stopped:.1f} s")
    # The remaining replica still answers.
    response = httpx.post(f"{url}/v1/classify", json=BODY, timeout=60)
    assert response.status_code == 200, response.text
