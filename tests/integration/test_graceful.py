"""Graceful shutdown: requests in flight when replicas are replaced still get their answers.

A redeploy that changes the replicas' resources makes Serve start new Ingress and Classifier
replicas and stop the old ones; each stopping replica leaves the routing table, then drains what
it holds (`graceful_shutdown_timeout_s`). Steady load runs across the whole switch, so requests
are in flight on the old replicas when they are told to stop.
"""

from __future__ import annotations

from collections import Counter

import pytest
from live import SteadyLoad, replica_names, wait_for

pytestmark = pytest.mark.ray

APP = "graceful"
BODY = {
    "texts": [f"Report {i}: the council approved the new stadium budget." for i in range(16)],
    "labels": ["sports", "politics", "finance", "weather"],
}
CLIENTS = 4
# Jobs are off (deploy_app's default): the JobRunner is not on the request path tested here.
BEFORE = {"classifier": {"num_cpus": 0.5}, "ingress": {"num_cpus": 0.1}}
AFTER = {"classifier": {"num_cpus": 0.4}, "ingress": {"num_cpus": 0.05}}


def serving_replicas() -> set[str]:
    return replica_names(APP, "Ingress") | replica_names(APP, "Classifier")


def test_inflight_requests_finish_across_a_redeploy(deploy_app) -> None:
    url = deploy_app(APP, **BEFORE)
    old = serving_replicas()
    assert len(old) == 2

    with SteadyLoad(f"{url}/v1/classify", BODY, CLIENTS) as load:
        wait_for(lambda: load.done >= 2 * CLIENTS, 120, "load to start")
        # New resources: Serve replaces every replica (rolling), under load.
        deploy_app(APP, **AFTER)
        wait_for(lambda: not (serving_replicas() & old), 180, "the old replicas to stop")
        new = serving_replicas()
        at_switch = load.done
        wait_for(lambda: load.done >= at_switch + 2 * CLIENTS, 120, "load on the new replicas")

    assert len(new) == 2 and not (new & old)
    statuses = Counter(o.status for o in load.outcomes)
    assert statuses == Counter({200: load.done}), statuses
