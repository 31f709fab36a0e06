"""Model per node, on a real two-node Ray cluster on this machine.

The head node and the driver share one Hugging Face home; the worker node has its own, and a
custom resource (`zsc_model`) that places the Classifier replicas there. Both homes hold the
tiny test model in the hub cache layout under a fake hub id, so nothing is ever downloaded
(HF_HUB_OFFLINE=1 everywhere). The driver runs `build_app` (which checks the model in its own
cache and pins the commit it found), then removes its own copy, then deploys: the replica on the
worker node must load the worker's copy, and answer what the pipeline answers. A second app
names a model only the head has: its replica on the worker fails with one line in
`serve status`.

One cluster for both cases (starting one costs a minute here). It reuses test_multinode's
cluster helpers: its own ports, temp dirs and token, and it kills only what it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import wait_for
from parity import as_list, assert_same_results
from ray_cluster import DEPLOY_TIMEOUT_S, HEAD_RESOURCE, REPO, Cluster, own_cluster
from transformers import pipeline

from serve_app.devtools.ports import free_port
from serve_app.devtools.test_models import place_in_hub_cache

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

PRESENT, ABSENT = "zsc-test/tiny-nli", "zsc-test/tiny-nli-head-only"
MODEL_RESOURCE = "zsc_model"
TEXTS = ["the match ended in a draw", "rain all week"]
LABELS = ["sports", "weather", "politics"]

# Runs as the driver, in its own process (this pytest process may hold the session's local
# Ray): build both apps, remove the head's copy of the first model, deploy without waiting.
DRIVER = """
import json, shutil, sys
import ray
from ray import serve
from ray.serve.api import _run
from serve_app.app import build_app

spec = json.loads(sys.argv[1])
ray.init(address=spec["address"], namespace="serve")
serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": spec["port"]})
built = [(app["name"], build_app(app["args"])) for app in spec["apps"]]
shutil.rmtree(spec["remove"])
for name, app in built:
    _run(app, name=name, route_prefix="/" + name, _blocking=False)
print("deployed")
"""


def _args(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "device": "cpu",
        "jobs": {"enabled": False},
        "classifier": {"num_cpus": 0.25, "resources": {MODEL_RESOURCE: 1}},
        "ingress": {"num_cpus": 0.1, "resources": {HEAD_RESOURCE: 1}},
    }


@pytest.fixture(scope="module")
def apps(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, str, dict[str, str]]]:
    homes = tmp_path_factory.mktemp("hf-homes")
    head_home, worker_home = homes / "head", homes / "worker"
    commits = {
        PRESENT: place_in_hub_cache(tiny_model_dir, head_home / "hub", PRESENT),
        ABSENT: place_in_hub_cache(tiny_model_dir, head_home / "hub", ABSENT),
    }
    assert place_in_hub_cache(tiny_model_dir, worker_home / "hub", PRESENT) == commits[PRESENT]
    with own_cluster(tmp_path_factory, {"HF_HOME": str(head_home)}) as cluster:
        cluster.start_worker(
            "w1", resources={MODEL_RESOURCE: 10}, env={"HF_HOME": str(worker_home)}
        )
        port = free_port()
        spec = {
            "address": cluster.gcs_address,
            "port": port,
            "apps": [
                {"name": "present", "args": _args(PRESENT)},
                {"name": "absent", "args": _args(ABSENT)},
            ],
            "remove": str(head_home / "hub" / ("models--" + PRESENT.replace("/", "--"))),
        }
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(spec)],
            cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert not Path(spec["remove"]).exists()
        yield cluster, f"http://127.0.0.1:{port}", commits


def _app(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.serve_details().get("applications", {}).get(name) or {}


def test_each_node_loads_its_own_copy_at_the_pinned_revision(
    apps: tuple[Cluster, str, dict[str, str]], tiny_model_dir: Path
) -> None:
    cluster, url, commits = apps

    def running() -> bool:
        app = _app(cluster, "present")
        assert app.get("status") != "DEPLOY_FAILED", app.get("message")
        return app.get("status") == "RUNNING"

    wait_for(running, DEPLOY_TIMEOUT_S, "the app to run on the worker's copy", 1.0)
    (worker,) = [n for n in cluster.nodes if n.name.startswith("w1")]
    replicas = _app(cluster, "present")["deployments"]["Classifier"]["replicas"]
    assert {r["node_id"] for r in replicas} == {worker.node_id}

    response = httpx.post(
        f"{url}/present/v1/classify", json={"texts": TEXTS, "labels": LABELS}, timeout=120
    )
    assert response.status_code == 200, response.text
    reference = pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")
    assert_same_results(
        response.json()["results"], as_list(reference(TEXTS, candidate_labels=LABELS))
    )

    info = httpx.get(f"{url}/present/v1/model", timeout=60).json()
    assert info["model"] == PRESENT and info["revision"] == commits[PRESENT]
    assert info["source"].startswith(str(Path(cluster.env["HF_HOME"]).parent / "worker"))


def test_a_node_without_the_model_fails_with_one_line_in_serve_status(
    apps: tuple[Cluster, str, dict[str, str]],
) -> None:
    cluster, _, commits = apps
    line = f"zsc: Cannot load the model {ABSENT!r} at revision {commits[ABSENT]}"

    def reported() -> str | None:
        status = cluster.serve("status")
        return status if line in status else None

    status = wait_for(reported, DEPLOY_TIMEOUT_S, "serve status to report the missing model", 2.0)
    message = _app(cluster, "absent")["deployments"]["Classifier"]["message"]
    # The whole reason fits one line: the id, the commit, and what to do.
    (ours,) = [m for m in message.splitlines() if line in m]
    assert "hf download" in ours
    assert "Classifier" in status
