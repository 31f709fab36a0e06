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
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from live import wait_for

from serve_app.devtools.ports import free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
APP = "zsc"
HEAD_RESOURCE, WORKER_RESOURCE = "zsc_head", "zsc_worker"
# The resource Ray puts on the head node only; build_app pins the JobRunner with it.
RAY_HEAD_RESOURCE = "node:__internal_head__"
RATE, BURST = 4.0, 16.0  # pairs per second, bucket size
BODY = {"texts": ["the match ended in a draw", "rain all week"], "labels": ["sports", "weather"]}
COST = 4  # pairs per request: 2 texts x 2 labels
BURST_CLIENT, PROBE_CLIENT = "127.0.0.1", "127.0.0.2"  # source addresses: one bucket each
# Generous: the machine has 2 cores shared with other work, where a replica can take a minute
# to start (worker process, torch import, model load).
START_TIMEOUT_S = 120.0
DEPLOY_TIMEOUT_S = 300.0
RECOVER_TIMEOUT_S = 240.0
# Ray 2.60's raylet gives its dashboard agent a fixed 15 s to write its port files and aborts
# the node otherwise (ray-project/ray#65983); on a loaded 2-core machine the agent's imports
# alone can take longer. Only that failure is retried, on fresh ports and a fresh temp dir.
AGENT_TIMEOUT_MARK = "Timed out waiting for file"
START_ATTEMPTS = 3


# --- processes -------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (not zombie) process we can read."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name in stat is parenthesised and may hold spaces: split after it.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            table[int(entry)] = (int(ppid), cmdline)
    return table


@dataclass
class RayNode:
    """One `ray start --block` process and everything it (and its node) runs.

    The node's processes are the descendants of that process plus any process whose command
    line names the node's own temp dir (a worker whose parent already died, for instance):
    only ever processes this test started.
    """

    name: str
    temp_dir: Path
    proc: subprocess.Popen
    log_path: Path
    node_id: str = ""  # Ray's id of the node, once it has joined

    def pids(self) -> set[int]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        # Walk from `ray start` only while it is unreaped: after that its pid may be reused.
        found: set[int] = set()
        todo = [self.proc.pid] if self.proc.poll() is None else []
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, []))
        marker = str(self.temp_dir) + "/"
        found |= {pid for pid, (_, cmd) in table.items() if marker in cmd}
        found.discard(os.getpid())
        return {pid for pid in found if pid in table}

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        self.proc.poll()  # reap `ray start` if it died, so it is not left a zombie

    def stop(self, deadline: float) -> None:
        """Wait until `deadline` for the node to stop after `terminate()`, then SIGKILL what is
        left of it."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _ in range(3):
            if not self.pids():
                break
            self.kill(signal.SIGKILL)
            time.sleep(0.5)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def agent_timed_out(self) -> bool:
        """Whether the raylet aborted on the dashboard agent's port-file timeout."""
        for path in glob.glob(f"{self.temp_dir}/session_*/logs/raylet.out"):
            if AGENT_TIMEOUT_MARK in Path(path).read_text(errors="replace"):
                return True
        return False


class NodeStartFailed(AssertionError):
    def __init__(self, node: RayNode):
        super().__init__(f"`ray start` for {node.name} exited:\n{node.log()}")
        self.node = node


@dataclass
class Cluster:
    base_dir: Path
    env: dict[str, str] = field(repr=False)  # never in a failure report: it holds the token
    token: str = field(repr=False)
    gcs_address: str = ""
    dashboard_url: str = ""
    http_url: str = ""
    nodes: list[RayNode] = field(default_factory=list)

    # -- starting nodes --

    @staticmethod
    def _ports(*names: str) -> list[str]:
        args: list[str] = []
        used: set[int] = set()
        for name in names:
            port = free_port()
            while port in used:
                port = free_port()
            used.add(port)
            args += [f"--{name}", str(port)]
        return args

    def _start(
        self, name: str, make_args: Callable[[], list[str]], env: dict[str, str] | None = None
    ) -> RayNode:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once(
                    name if attempt == 1 else f"{name}.{attempt}", make_args(), env
                )
            except NodeStartFailed as failure:
                failure.node.stop(time.monotonic())
                self.nodes.remove(failure.node)
                if attempt == START_ATTEMPTS or not failure.node.agent_timed_out():
                    raise
                print(f"{name}: the raylet gave up on its dashboard agent; starting it again")
        raise AssertionError("not reached")

    def _start_once(self, name: str, args: list[str], env: dict[str, str] | None = None) -> RayNode:
        temp_dir = self.base_dir / name
        temp_dir.mkdir()
        log_path = self.base_dir / f"{name}.log"
        command = [
            RAY, "start", "--block", "--disable-usage-stats",
            "--temp-dir", str(temp_dir),
            "--object-store-memory", str(100 * 1024 * 1024),
            "--num-gpus", "0",
            # Other Ray instances run on this machine: take no default port.
            *self._ports(
                "node-manager-port", "object-manager-port", "metrics-export-port",
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
            ),
            *args,
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command, cwd=REPO, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        node = RayNode(name, temp_dir, proc, log_path)
        self.nodes.append(node)

        def started() -> bool:
            if proc.poll() is not None:
                raise NodeStartFailed(node)
            return "Ray runtime started" in node.log()

        wait_for(started, START_TIMEOUT_S, f"ray node {name} to start", 0.5)
        return node

    def start_head(self) -> RayNode:
        def head_args() -> list[str]:
            gcs_port, dashboard_port, client_port = free_port(), free_port(), free_port()
            self.gcs_address = f"127.0.0.1:{gcs_port}"
            self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
            return [
                "--head", "--port", str(gcs_port),
                "--num-cpus", "2", "--resources", json.dumps({HEAD_RESOURCE: 10}),
                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard_port),
                "--ray-client-server-port", str(client_port),
                # Notice a dead node in ~3 s instead of ~30 s (the default health checks).
                "--system-config",
                json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3}),
            ]  # fmt: skip

        node = self._start("head", head_args)
        wait_for(lambda: self._get("/api/version", quiet=True), START_TIMEOUT_S, "the dashboard")
        return node

    def start_worker(
        self,
        name: str,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
    ) -> RayNode:
        """A worker node with `resources` (default {zsc_worker: 10}) and `env` on top of the
        cluster's environment (its own HF_HOME, say)."""
        before = {n["node_id"] for n in self.alive_nodes()}
        custom = json.dumps(resources or {WORKER_RESOURCE: 10})
        node = self._start(
            name,
            lambda: [
                "--address", self.gcs_address,
                "--num-cpus", "2", "--resources", custom,
            ],
            env,
        )  # fmt: skip
        new = wait_for(
            lambda: [n for n in self.alive_nodes() if n["node_id"] not in before],
            START_TIMEOUT_S,
            f"node {name} to join the cluster",
            0.5,
        )
        assert len(new) == 1, new
        node.node_id = new[0]["node_id"]
        return node

    # -- talking to it --

    def _get(self, path: str, quiet: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            response = httpx.get(self.dashboard_url + path, headers=headers, timeout=30)
        except httpx.HTTPError:
            if quiet:
                return None
            raise
        if quiet and response.status_code != 200:
            return None
        response.raise_for_status()
        return response.json()

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the state API lists them (node_id, resources_total, ...)."""
        body = self._get("/api/v0/nodes?limit=100&detail=true")
        return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def serve_details(self) -> dict[str, Any]:
        return self._get("/api/serve/applications/")

    def replicas(self, deployment: str) -> list[dict[str, Any]]:
        app = self.serve_details().get("applications", {}).get(APP)
        if not app:
            return []
        return app["deployments"].get(deployment, {}).get("replicas", [])

    def running_node_ids(self, deployment: str) -> set[str]:
        return {r["node_id"] for r in self.replicas(deployment) if r["state"] == "RUNNING"}

    def serve(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [SERVE, *args, "--address", self.dashboard_url],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, f"serve {args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def stop(self, grace_s: float = 20.0) -> None:
        # SIGTERM makes `ray start --block` stop its node's processes (gracefully, in parallel).
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        deadline = time.monotonic() + grace_s
        for node in self.nodes:
            node.stop(deadline)


def _short_base_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """A temp dir short enough for Ray's unix sockets (107 bytes with the session name)."""
    base = tmp_path_factory.mktemp("r")
    if len(str(base)) <= 40:
        return base, False
    return Path(tempfile.mkdtemp(prefix="zsc-r")), True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with own_cluster(tmp_path_factory) as running:
        yield running


@contextlib.contextmanager
def own_cluster(
    tmp_path_factory: pytest.TempPathFactory, extra: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """A head node of this test's own (its ports, temp dir and token; `extra` on top of this
    process's environment), torn down by killing exactly the processes it started."""
    base_dir, remove_after = _short_base_dir(tmp_path_factory)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    cluster = Cluster(base_dir=base_dir, env={**env, **(extra or {})}, token=token)
    try:
        cluster.start_head()
        yield cluster
    finally:
        cluster.stop()
        leftovers = {n.name: n.pids() for n in cluster.nodes}
        if remove_after:
            shutil.rmtree(base_dir, ignore_errors=True)
        assert not any(leftovers.values()), f"processes survived the teardown: {leftovers}"


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
