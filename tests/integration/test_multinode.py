"""A real multi-node Ray cluster on this machine: placement, the shared limit, and losing a node.

`ray start --head` plus `ray start --address=...` worker nodes, each with its own custom resource
(`zsc_head`, `zsc_worker`), then `serve deploy` of a config file derived from the project's
`deploy_config.yaml` (tiny model, small CPU shares, the Ingress pinned to the head and the
Classifier to worker nodes through `ray_actor_options.resources`). The test checks that:

- the Ingress and the Classifier run on different nodes;
- the JobRunner (the only process that opens the SQLite job store) runs on the head node, pinned
  there by the `node:__internal_head__` resource `build_app` gives it;
- the rate limit holds for the whole cluster (one limiter actor every ingress replica consults);
- when the worker node that holds the Classifier dies, Serve starts the replica on another
  worker node and requests succeed again.

The cluster is this test's own and nothing else's: its own ports, its own `--temp-dir` (so it
never touches /tmp/ray or `session_latest` of other Ray instances on the machine), its own
authentication token (`RAY_AUTH_TOKEN`, never ~/.ray/auth_token), and it is torn down by killing
exactly the processes it started (never `ray stop`, which stops every Ray on the machine). The
pytest process itself stays out of it (it may be connected to the session's local Ray): it talks
to the cluster through the dashboard's REST API, and `serve deploy` runs as a subprocess.

Linux-only (it reads /proc to find a node's processes).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from live import wait_for
from ray_cluster import (
    APP,
    DEPLOY_TIMEOUT_S,
    HEAD_RESOURCE,
    WORKER_RESOURCE,
    Cluster,
    own_cluster,
)

from serve_app.devtools.ports import free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

REPO = Path(__file__).resolve().parents[2]

# The resource Ray puts on the head node only; build_app pins the JobRunner with it.
RAY_HEAD_RESOURCE = "node:__internal_head__"
RATE, BURST = 4.0, 16.0  # pairs per second, bucket size
BODY = {"texts": ["the match ended in a draw", "rain all week"], "labels": ["sports", "weather"]}
COST = 4  # pairs per request: 2 texts x 2 labels
BURST_CLIENT, PROBE_CLIENT = "127.0.0.1", "127.0.0.2"  # source addresses: one bucket each
# Generous: a replica can take a minute to recover on 2 shared cores.
RECOVER_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with own_cluster(tmp_path_factory) as running:
        yield running


# --- the app -------------------------------------------------------------------------------


def _serve_config(model_dir: Path, jobs_db: Path, http_port: int) -> dict[str, Any]:
    """`deploy_config.yaml`, scaled down to this machine and pinned to the test's nodes."""
    config = yaml.safe_load((REPO / "deploy_config.yaml").read_text())
    # One proxy, on the head: every node here shares one address, so proxies on several nodes
    # would compete for the same port.
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = [a for a in config["applications"] if a["name"] == APP]
    args = app["args"]
    # Loopback here, and the test's clients are anonymous (one bucket per source address).
    args.pop("auth", None)
    args.update(
        model=str(model_dir),
        device="cpu",
        classifier={"num_replicas": 1, "num_cpus": 0.25},
        ingress={"num_replicas": 2, "num_cpus": 0.1},
        rate_limit={
            "enabled": True,
            "default": {"rate": RATE, "burst": BURST},
            "cost": "pairs",
            # Closed, with a generous timeout: a slow limiter on this busy machine must
            # answer 503, never let requests through unlimited.
            "fail_mode": "closed",
            "timeout_s": 5.0,
        },
        # SQLite here, so one runner (the cluster shares PostgreSQL between its runners).
        jobs={**args.get("jobs", {}), "db_path": str(jobs_db), "runners": 1},
    )
    # A deployment's ray_actor_options in a config file replace the ones in code: repeat the CPUs.
    overrides = {d["name"]: d for d in app.get("deployments", [])}
    overrides.setdefault("Ingress", {"name": "Ingress"})["ray_actor_options"] = {
        "num_cpus": 0.1,
        "resources": {HEAD_RESOURCE: 1},
    }
    overrides.setdefault("Classifier", {"name": "Classifier"})["ray_actor_options"] = {
        "num_cpus": 0.25,
        "resources": {WORKER_RESOURCE: 1},
    }
    app["deployments"] = list(overrides.values())
    return config


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    first_worker = cluster.start_worker("w1")
    http_port = free_port()
    config_dir = tmp_path_factory.mktemp("multinode")
    config = _serve_config(tiny_model_dir, config_dir / "jobs.sqlite3", http_port)
    config_path = config_dir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    cluster.serve("deploy", str(config_path))
    cluster.http_url = f"http://127.0.0.1:{http_port}"

    def app_running() -> bool:
        app = cluster.serve_details().get("applications", {}).get(APP)
        if app and app["status"] == "DEPLOY_FAILED":
            raise AssertionError(f"deploy failed: {app.get('message')}")
        return bool(app) and app["status"] == "RUNNING"

    wait_for(app_running, DEPLOY_TIMEOUT_S, "the app to run on the cluster", 1.0)
    return first_worker


def _client(address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, timeout=60)


def _probe(url: str) -> int | None:
    """One classify request from the probe address; its status, or None if it did not answer."""
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(local_address=PROBE_CLIENT), timeout=30
        ) as c:
            return c.post(f"{url}/v1/classify", json=BODY).status_code
    except httpx.HTTPError:
        return None


# --- the tests -------------------------------------------------------------------------------


def test_ingress_and_classifier_run_on_different_nodes(cluster: Cluster, deployed) -> None:
    nodes = {n["node_id"]: n["resources_total"] for n in cluster.alive_nodes()}
    ingress = cluster.running_node_ids("Ingress")
    classifier = cluster.running_node_ids("Classifier")
    assert ingress and classifier
    assert all(HEAD_RESOURCE in nodes[node] for node in ingress), (ingress, nodes)
    assert all(WORKER_RESOURCE in nodes[node] for node in classifier), (classifier, nodes)
    assert not ingress & classifier
    assert classifier == {deployed.node_id}
    assert len(cluster.replicas("Ingress")) == 2

    assert _probe(cluster.http_url) == 200


def test_the_job_runner_runs_on_the_head_node(cluster: Cluster, deployed) -> None:
    nodes = {n["node_id"]: n["resources_total"] for n in cluster.alive_nodes()}
    [head] = [node for node, resources in nodes.items() if RAY_HEAD_RESOURCE in resources]
    assert HEAD_RESOURCE in nodes[head]  # the node this test started with --head
    [replica] = cluster.replicas("JobRunner")
    assert replica["state"] == "RUNNING" and replica["node_id"] == head, (replica, head)
    # There by the pin, not by chance (the scheduler could as well have put it on the worker):
    # its actor asks for the head-only resource.
    actors = cluster._get("/api/v0/actors?limit=1000&detail=true")["data"]["result"]["result"]
    [actor] = [a for a in actors if a["actor_id"] == replica["actor_id"]]
    assert actor["required_resources"].get(RAY_HEAD_RESOURCE, 0) > 0, actor["required_resources"]
    # And it serves: a job submitted over HTTP runs to the end (from the probe address, so
    # the burst test's bucket stays full).
    transport = httpx.HTTPTransport(local_address=PROBE_CLIENT)
    with httpx.Client(base_url=cluster.http_url, transport=transport, timeout=60) as client:
        submitted = client.post("/v1/jobs", json=BODY)
        assert submitted.status_code == 202, submitted.text
        path = f"/v1/jobs/{submitted.json()['id']}"

        def ended() -> dict[str, Any] | None:
            job = client.get(path).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        assert wait_for(ended, 120, "the job to end")["state"] == "succeeded"


def test_the_shared_limit_holds_across_the_cluster(cluster: Cluster, deployed) -> None:
    """A burst of concurrent requests from one client, spread over both ingress replicas: the
    admitted cost stays within one bucket (burst + rate x elapsed), not one per replica."""
    requests = 40  # cost 160 pairs: ten times the burst

    async def burst() -> tuple[list[int], float]:
        async with _client(BURST_CLIENT) as client:
            start = time.monotonic()
            answers = await asyncio.gather(
                *(
                    client.post(f"{cluster.http_url}/v1/classify", json=BODY)
                    for _ in range(requests)
                )
            )
            return [a.status_code for a in answers], time.monotonic() - start

    statuses, elapsed = asyncio.run(burst())
    admitted = COST * statuses.count(200)
    print(f"admitted {admitted} pairs of {COST * requests} in {elapsed:.2f} s: {statuses}")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0, statuses
    assert COST <= admitted <= BURST + RATE * elapsed + COST, (admitted, elapsed, statuses)
    # One limiter actor for the whole app, whichever node and replica a request went through.
    limiters = [
        a
        for a in cluster._get("/api/v0/actors?limit=1000&detail=false")["data"]["result"]["result"]
        if a.get("class_name") == "RateLimitActor" and a.get("state") == "ALIVE"
    ]
    assert len(limiters) == 1, limiters


def test_losing_the_classifier_node_moves_its_replica(cluster: Cluster, deployed) -> None:
    first_worker = deployed
    second_worker = cluster.start_worker("w2")
    assert cluster.running_node_ids("Classifier") == {first_worker.node_id}

    # The first worker node dies: its raylet, agents and workers, nothing else.
    first_worker.kill(signal.SIGKILL)
    wait_for(
        lambda: first_worker.proc.poll() is not None and not first_worker.pids(),
        30,
        "the first worker's processes to exit",
    )
    killed_at = time.monotonic()

    wait_for(
        lambda: cluster.running_node_ids("Classifier") == {second_worker.node_id},
        RECOVER_TIMEOUT_S,
        "the Classifier replica to run on the second worker node",
        1.0,
    )
    wait_for(lambda: _probe(cluster.http_url) == 200, 60, "requests to succeed again", 1.0)
    print(f"recovered {time.monotonic() - killed_at:.1f} s after the node died")
    assert first_worker.node_id not in {n["node_id"] for n in cluster.alive_nodes()}
    # And they keep succeeding.
    assert [_probe(cluster.http_url) for _ in range(3)] == [200, 200, 200]
