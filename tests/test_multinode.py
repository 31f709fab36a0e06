"""A real multi-node Ray cluster on this machine, apart from the test session's own Ray.

`ray start --head` plus `ray start --address=...` worker nodes, each on free ports with its own
`--temp-dir`, each offering a custom resource (`zsc_head` on the head, `zsc_worker` on workers)
so the test variant of deploy_config.yaml can pin the Ingress to the head and the Classifier to
a worker. `serve deploy` then goes through the head's dashboard, as an operator's would.

What it shows: the deployments land on different nodes (and the JobRunner on the head, next to
its SQLite file); one client's rate limit is one budget whether it is spent on the head or on a
worker node; and when the worker node dies, Serve starts its replica on a spare worker and
requests succeed again.

Ray 2.60's `ray start --head` turns token authentication on when a token exists on the machine
(e.g. ~/.ray/auth_token), but its CLI clients (`serve`, `ray list`) only send it when
RAY_AUTH_MODE=token. So the test makes the same check once and sets RAY_AUTH_MODE for every
command it runs; Ray itself reads the token.

Nodes are stopped by killing exactly their own process trees (never `ray stop`, which stops
every Ray instance on the machine, other test sessions' included).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray._raylet import AuthenticationTokenLoader

from live import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
APP = "zsc"
BODY = {"text": "The council approved the stadium budget.", "labels": ["politics", "sports"]}
PAIRS = 2
# Requests from this loopback address get a bucket of 10 pairs that practically never refills,
# so how many pairs it admits is exact; everyone else (127.0.0.1) keeps the generous default.
LIMITED = "127.0.0.2"
BURST = 10

# Runs in a driver connected to the cluster: a task pinned to one node spends LIMITED's tokens
# through the same client (RateLimitClient -> the app's limiter actor) every ingress replica
# uses, one pair at a time until refused, and says where it ran and how much it got.
SPEND_ON_NODE = """
import asyncio, json, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
def spend(config, key):
    from serve_app.config import RateLimitConfig
    from serve_app.errors import RateLimited
    from serve_app.limiter import RateLimitClient

    client = RateLimitClient(RateLimitConfig.model_validate(config), app_name=%(app)r)

    async def drain():
        admitted = 0
        while True:
            try:
                await client.admit(key, 1.0)
            except RateLimited:
                return admitted
            admitted += 1

    return {"node_id": ray.get_runtime_context().get_node_id(), "admitted": asyncio.run(drain())}

node_id, key, config, address = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
ray.init(address=address, log_to_driver=False)
strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
print(json.dumps(ray.get(spend.options(scheduling_strategy=strategy).remote(config, key), timeout=180)))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every running process, from /proc (zombies are dead:
    killed, waiting only for a parent to reap them)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def process_tree(roots: dict[int, str]) -> dict[int, str]:
    """The live processes among `roots` (pid -> start time) and all their descendants."""
    table = _process_table()
    tree = {pid: start for pid, start in roots.items() if table.get(pid, (0, None))[1] == start}
    frontier = list(tree)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in tree]
        tree.update((pid, table[pid][1]) for pid in children)
        frontier.extend(children)
    return tree


def kill_process_tree(roots: dict[int, str]) -> None:
    """SIGKILL `roots` and every descendant, including ones orphaned while we kill.

    Ray workers move to their own process groups, so a process-group kill would miss them; the
    parent links still lead to them. Every pid is matched with its start time, so a recycled pid
    of someone else's process is never touched, and the pids found in earlier rounds are killed
    again (a dead parent's children are re-parented out of reach of the tree).
    """
    seen = dict(roots)
    for _ in range(20):
        alive = process_tree(seen)
        seen.update(alive)
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"processes of the test cluster survived SIGKILL: {sorted(seen)}")


# The check `ray start` makes (has_token, whatever the mode), made once for all commands.
AUTH_MODE = (
    "token" if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True) else "disabled"
)


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": AUTH_MODE,
        "RAY_USAGE_STATS_ENABLED": "0",
        # A node waits this long for its raylet to register (30 s by default); on a loaded
        # 2-core machine, shared with other test sessions, that is not always enough.
        "RAY_raylet_start_wait_time_s": "120",
    }
    # Every command names its cluster explicitly; never follow an inherited address.
    env.pop("RAY_ADDRESS", None)
    return env


def _run(*args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(args[:3])} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class RayNode:
    """One `ray start --block` process and everything it started."""

    marker: str  # a resource only this node has, to find its node id
    process: subprocess.Popen
    log: Path
    node_id: str = ""
    # The node's processes (pid -> start time) as last seen: they stay reachable even if
    # `ray start` itself dies first (e.g. a failed start) and its children are re-parented.
    pids: dict[int, str] = field(default_factory=dict)

    def track(self) -> None:
        started = _process_table().get(self.process.pid)
        root = {self.process.pid: started[1]} if started else {}
        self.pids.update(process_tree({**self.pids, **root}))

    def kill(self) -> None:
        self.track()
        kill_process_tree(self.pids)
        self.process.wait(timeout=30)


@dataclass
class Cluster:
    root: Path
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # what `serve deploy` was given

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def start_node(self, name: str, resources: dict[str, float], head: bool = False) -> RayNode:
        marker = f"zsc_node_{name}"
        args = [
            str(BIN / "ray"), "start", "--block",
            "--num-cpus", "1",
            "--resources", json.dumps({**resources, marker: 1}),
            "--object-store-memory", str(100 * 1024 * 1024),
            "--temp-dir", str(self.root / name),
            "--include-log-monitor", "false",
            "--disable-usage-stats",
            # Free ports for everything a node listens on: other Ray instances run here too.
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0",
        ]
        if head:
            args += [
                "--head", "--port", str(self.gcs_port),
                "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(free_port()),
            ]
        else:
            args += ["--address", f"127.0.0.1:{self.gcs_port}"]
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            # Its own session: no signal meant for pytest's process group reaches the cluster;
            # the teardown kills it by its process tree.
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
            )
        node = RayNode(marker, process, log)
        self.nodes.append(node)
        node.node_id = wait_for(lambda: self._alive_node_with(node), 240, f"node {name} to join", 2)
        return node

    def _alive_node_with(self, node: RayNode) -> str | None:
        node.track()
        assert node.process.poll() is None, f"ray start exited:\n{node.log.read_text()[-3000:]}"
        try:
            nodes = self.list_nodes()
        except AssertionError:  # the head's dashboard is not answering yet
            return None
        for info in nodes:
            if info["state"] == "ALIVE" and node.marker in info["resources_total"]:
                return info["node_id"]
        return None

    def _ray_list(self, kind: str, *options: str) -> list[dict[str, Any]]:
        """`ray list <kind>` through the head's dashboard (Ray's state API)."""
        out = _run(
            str(BIN / "ray"), "list", kind, "--address", self.dashboard, "--format", "json",
            "--limit", "1000", *options,
        )
        # An empty answer is a sentence, not JSON.
        return [] if out.startswith("No resource") else json.loads(out)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._ray_list("nodes")

    def replica_nodes(self) -> dict[str, list[str]]:
        """Deployment name -> node ids of its live replica actors."""
        actors = self._ray_list("actors", "--filter", "state=ALIVE")
        prefix = f"SERVE_REPLICA::{APP}#"
        placement: dict[str, list[str]] = {}
        for actor in actors:
            name = actor.get("name") or ""
            if name.startswith(prefix):
                deployment = name.removeprefix(prefix).split("#")[0]
                placement.setdefault(deployment, []).append(actor["node_id"])
        return placement

    def serve_status(self) -> dict[str, Any]:
        return yaml.safe_load(_run(str(BIN / "serve"), "status", "--address", self.dashboard))

    def app_running(self) -> bool:
        app = (self.serve_status().get("applications") or {}).get(APP) or {}
        return app.get("status") == "RUNNING"

    def spend_on_node(self, node_id: str, key: str, rate_limit: dict[str, Any]) -> dict[str, Any]:
        out = _run(
            sys.executable, "-c", SPEND_ON_NODE % {"app": APP},
            node_id, key, json.dumps(rate_limit), f"127.0.0.1:{self.gcs_port}",
        )
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        """Kill every node; one that resists does not spare the others."""
        errors = []
        for node in reversed(self.nodes):  # workers first, the head (GCS) last
            try:
                node.kill()
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                errors.append(exc)
        assert not errors, errors


def cluster_config(model_dir: Path, db_path: Path, http_port: int) -> dict[str, Any]:
    """deploy_config.yaml, changed only where one machine and a tiny model need it."""
    config = yaml.safe_load((ROOT / "deploy_config.yaml").read_text())
    # Every node's proxy would bind the same host:port on one machine; one proxy on the head.
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = config["applications"]
    args = app["args"]
    args["model"] = str(model_dir)
    args["classifier"] = {"num_cpus": 0.1, "resources": {"zsc_worker": 1}}
    args["ingress"] = {"num_cpus": 0.1, "resources": {"zsc_head": 1}}
    args["rate_limit"]["overrides"] = {LIMITED: {"rate": 0.0001, "burst": BURST}}
    args["jobs"]["db_path"] = str(db_path)
    return config


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path) -> Iterator[Cluster]:
    # A short root: Ray's Unix socket paths under it must stay within 107 characters.
    root = Path(tempfile.mkdtemp(prefix="zsc-mn-", dir="/tmp"))
    cluster = Cluster(root)
    try:
        started = time.monotonic()
        cluster.start_node("head", {"zsc_head": 10}, head=True)
        cluster.start_node("worker1", {"zsc_worker": 10})
        print(f"\ntwo-node cluster up in {time.monotonic() - started:.0f} s")

        config = cluster_config(tiny_model_dir, root / "jobs.sqlite3", cluster.http_port)
        config_path = root / "deploy_config.test.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        deployed = time.monotonic()
        _run(str(BIN / "serve"), "deploy", str(config_path), "--address", cluster.dashboard)
        wait_for(cluster.app_running, 300, "serve deploy to reach RUNNING", 3)
        print(f"deployed in {time.monotonic() - deployed:.0f} s")
        cluster.config = config
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def classify(url: str, local_address: str = "127.0.0.1") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.post(f"{url}/v1/classify", json=BODY)


def test_serve_deploy_places_ingress_and_classifier_on_different_nodes(cluster: Cluster) -> None:
    head, worker = cluster.head.node_id, cluster.nodes[1].node_id
    placement = cluster.replica_nodes()
    assert placement["Ingress"] == [head], placement
    assert placement["Classifier"] == [worker], placement
    # The JobRunner follows Ray's own head-node resource, next to the job store's file.
    assert placement["JobRunner"] == [head], placement
    head_info = next(n for n in cluster.list_nodes() if n["node_id"] == head)
    assert "node:__internal_head__" in head_info["resources_total"]

    response = classify(cluster.url)
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"pairs": PAIRS}


def test_the_rate_limit_is_shared_across_nodes(cluster: Cluster) -> None:
    worker = cluster.nodes[1].node_id
    # The head node's ingress spends 3 requests' worth of LIMITED's bucket ...
    for _ in range(3):
        response = classify(cluster.url, LIMITED)
        assert response.status_code == 200, response.text
    spent = 3 * PAIRS

    # ... a process on the worker node finds exactly the rest ...
    rate_limit = cluster.config["applications"][0]["args"]["rate_limit"]
    result = cluster.spend_on_node(worker, LIMITED, rate_limit)
    assert result["node_id"] == worker
    assert result["admitted"] == BURST - spent, result

    # ... and what it spent there is gone for the head node's ingress too.
    response = classify(cluster.url, LIMITED)
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) > 0


def test_losing_the_worker_node_moves_its_replicas(cluster: Cluster) -> None:
    lost = cluster.nodes[1]
    # A spare worker that offers the same resource, ready before the loss.
    spare = cluster.start_node("worker2", {"zsc_worker": 10})
    assert cluster.replica_nodes()["Classifier"] == [lost.node_id]

    killed = time.monotonic()
    lost.kill()

    def moved() -> bool:
        status = cluster.serve_status()["applications"][APP]["deployments"]["Classifier"]
        return status["replica_states"] == {"RUNNING": 1} and cluster.replica_nodes().get(
            "Classifier"
        ) == [spare.node_id]

    wait_for(moved, 300, "the Classifier replica to restart on the spare worker", 3)
    moved_s = time.monotonic() - killed

    def answers() -> bool:
        return classify(cluster.url).status_code == 200

    wait_for(answers, 120, "requests to succeed again after the node loss", 1)
    print(f"replica moved in {moved_s:.0f} s; answering {time.monotonic() - killed:.0f} s after the kill")

    dead = next(n for n in cluster.list_nodes() if n["node_id"] == lost.node_id)
    assert dead["state"] == "DEAD"
    assert cluster.replica_nodes()["Ingress"] == [cluster.head.node_id]
