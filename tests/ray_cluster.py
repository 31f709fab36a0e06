"""Real multi-node Ray clusters on this machine, for the tests that need one: `ray start --head`
plus `ray start --address=...` workers, each cluster with its own ports, `--temp-dir` and token,
torn down by killing exactly the processes it started (never `ray stop`). Linux-only (/proc).
"""

from __future__ import annotations

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
from live import wait_for

from serve_app.devtools.ports import free_ports

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
APP = "zsc"
HEAD_RESOURCE, WORKER_RESOURCE = "zsc_head", "zsc_worker"
# Generous: the machine has 2 cores shared with other work, where a replica can take a minute
# to start (worker process, torch import, model load).
START_TIMEOUT_S = 120.0
DEPLOY_TIMEOUT_S = 300.0
# Ray 2.60's raylet gives its dashboard agent a fixed 15 s to write its port files and aborts
# the node otherwise (ray-project/ray#65983); on a loaded 2-core machine the agent's imports
# alone can take longer. Only that failure is retried, on fresh ports and a fresh temp dir.
AGENT_TIMEOUT_MARK = "Timed out waiting for file"
# A port chosen free can be taken by another process before `ray start` binds it: retried too.
PORT_TAKEN_MARKS = ("is trying to use a port number", "already in use")
START_ATTEMPTS = 3
# Ports a node's `ray start` names (its six, and the head's GCS, dashboard and client server).
PORTS_PER_NODE = 9


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

    def stop(self) -> None:
        """SIGKILL the node's processes until none is left (a throwaway node needs no graceful
        shutdown), and reap `ray start`."""
        _kill_all([self])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def agent_timed_out(self) -> bool:
        """Whether the raylet aborted on the dashboard agent's port-file timeout."""
        for path in glob.glob(f"{self.temp_dir}/session_*/logs/raylet.out"):
            if AGENT_TIMEOUT_MARK in Path(path).read_text(errors="replace"):
                return True
        return False

    def port_taken(self) -> bool:
        """Whether `ray start` stopped on a port that something else holds."""
        return any(mark in self.log() for mark in PORT_TAKEN_MARKS)


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

    def _start(
        self,
        name: str,
        make_args: Callable[[Iterator[int]], list[str]],
        env: dict[str, str] | None = None,
    ) -> RayNode:
        """Start a node; `make_args` takes its ports from the node's supply of distinct ones."""
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = iter(free_ports(PORTS_PER_NODE))
            try:
                return self._start_once(
                    name if attempt == 1 else f"{name}.{attempt}", make_args(ports), env, ports
                )
            except NodeStartFailed as failure:
                failure.node.stop()
                self.nodes.remove(failure.node)
                retry = failure.node.agent_timed_out() or failure.node.port_taken()
                if attempt == START_ATTEMPTS or not retry:
                    raise
                print(f"{name}: failed to start ({failure}); starting it again")
        raise AssertionError("not reached")

    def _start_once(
        self, name: str, args: list[str], env: dict[str, str] | None, ports: Iterator[int]
    ) -> RayNode:
        temp_dir = self.base_dir / name
        temp_dir.mkdir()
        log_path = self.base_dir / f"{name}.log"
        command = [
            RAY, "start", "--block", "--disable-usage-stats",
            "--temp-dir", str(temp_dir),
            "--object-store-memory", str(100 * 1024 * 1024),
            "--num-gpus", "0",
            # Other Ray instances run on this machine: take no default port.
            *(
                arg
                for option in (
                    "node-manager-port", "object-manager-port", "metrics-export-port",
                    "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                )
                for arg in (f"--{option}", str(next(ports)))
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
        def head_args(ports: Iterator[int]) -> list[str]:
            gcs_port, dashboard_port, client_port = next(ports), next(ports), next(ports)
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
            lambda ports: [
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

    def stop(self) -> None:
        """Kill every process of every node at once. A test's own cluster holds nothing worth
        a graceful shutdown, and SIGTERM to `ray start --block` took ~20 s a cluster here."""
        _kill_all(self.nodes)


def _kill_all(nodes: list[RayNode], timeout_s: float = 30.0) -> None:
    """SIGKILL every process of `nodes` (only what they started) until none is left: a pass
    may find a worker process its raylet forked after the pass before listed it."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = set().union(*(node.pids() for node in nodes))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break  # the caller's check names what survived
        time.sleep(0.05)
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.kill()
        node.proc.wait(timeout=10)


def short_base_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """A temp dir short enough for Ray's unix sockets (107 bytes with the session name)."""
    base = tmp_path_factory.mktemp("r")
    if len(str(base)) <= 40:
        return base, False
    return Path(tempfile.mkdtemp(prefix="zsc-r")), True


@contextlib.contextmanager
def own_cluster(
    tmp_path_factory: pytest.TempPathFactory, extra: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """A head node of this test's own (its ports, temp dir and token; `extra` on top of this
    process's environment), torn down by killing exactly the processes it started."""
    base_dir, remove_after = short_base_dir(tmp_path_factory)
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
