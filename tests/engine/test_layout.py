"""The defaults use the whole machine: the Classifier's CPUs, threads and sub-batch workers follow
what the node has, and `GET /v1/model` reports the layout in use.

Each check states the machine it sizes for (a CPU count, or this process's affinity mask), so
nothing depends on whether an earlier test in this process started Ray (whose test cluster
counts 8 logical CPUs, fewer than the cores of a bigger machine)."""

from __future__ import annotations

import pytest

from serve_app.app import MIN_AUTO_CPUS, auto_classifier_cpus, node_cpus
from serve_app.config import AppConfig
from serve_app.engine.threads import affinity_cpus, replica_cpus, thread_plan


@pytest.mark.parametrize("cpus", [1.0, 2.0, 8.0, 64.0])
def test_auto_sizing_leaves_the_ingress_its_share(cpus: float) -> None:
    assert auto_classifier_cpus(AppConfig(), cpus) == pytest.approx(max(0.5, cpus - 0.25))
    two = AppConfig.model_validate({"ingress": {"num_replicas": 2, "num_cpus": 0.5}})
    assert auto_classifier_cpus(two, cpus) == pytest.approx(max(MIN_AUTO_CPUS, cpus - 1.0))


def test_a_config_that_sizes_the_classifier_keeps_its_own_number() -> None:
    assert AppConfig.model_validate({"classifier": {"num_cpus": 3}}).classifier.num_cpus == 3
    assert (
        AppConfig.model_validate({"classifier": {"num_replicas": 2}}).classifier.num_cpus == "auto"
    )


def test_the_machine_is_ray_s_count_capped_by_the_cores() -> None:
    cores = affinity_cpus()
    assert node_cpus(None) == cores  # no Ray: the cores this process may use
    assert node_cpus(cores + 8.0) == cores  # over-committed logical CPUs: the cores
    assert node_cpus(1.0) == 1.0  # a smaller Ray node: its own count


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
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert replica_cpus(None) == cores
    threads, workers = thread_plan(None, None, True, replica_cpus(cores - 0.25))
    assert threads * workers == cores
