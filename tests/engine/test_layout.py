"""The defaults use the whole machine: the Classifier's CPUs, threads and sub-batch workers follow
what the node has, and `GET /v1/model` reports the layout in use."""

from __future__ import annotations

import pytest

from serve_app.app import auto_classifier_cpus, machine_cpus
from serve_app.config import AppConfig
from serve_app.engine.threads import affinity_cpus, replica_cpus, thread_plan


def test_auto_sizing_leaves_the_ingress_its_share() -> None:
    cpus = machine_cpus()
    assert cpus == affinity_cpus()  # no Ray here: the cores this process may use
    assert auto_classifier_cpus(AppConfig()) == pytest.approx(cpus - 0.25)
    two = AppConfig.model_validate({"ingress": {"num_replicas": 2, "num_cpus": 0.5}})
    assert auto_classifier_cpus(two) == pytest.approx(max(0.5, cpus - 1.0))
    # A config that sizes the Classifier keeps its own number.
    assert AppConfig.model_validate({"classifier": {"num_cpus": 3}}).classifier.num_cpus == 3
    assert (
        AppConfig.model_validate({"classifier": {"num_replicas": 2}}).classifier.num_cpus == "auto"
    )


def test_threads_cover_the_budget_rounded_up_within_the_affinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = affinity_cpus()
    assert replica_cpus(cores - 0.25) == cores  # the ingress's fraction is rarely used: take it
    assert replica_cpus(0.5) == 1
    assert replica_cpus(cores + 7.5) == cores  # never more threads than cores
    # Without a budget (an explicit num_cpus), Ray's OMP_NUM_THREADS decides, as on a cluster.
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert replica_cpus(None) == 3
    threads, workers = thread_plan(None, None, True, replica_cpus(cores - 0.25))
    assert threads * workers == cores
