"""Shared fixtures: one tiny random NLI model and one local Ray/Serve instance per test run.

Ray starts once (about 8 s), in whichever pytest-xdist worker needs it first; the other workers
connect to it, and every integration test deploys into it. Tests that need their own
configuration deploy another application under its own name and route prefix with `deploy_app`,
so they never disturb the default `zsc` app (deployed once, for every worker).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A local Ray 2.60 instance requires a token (~/.ray/auth_token, created by the first one) and
# sets RAY_AUTH_MODE in its own process only; Ray reads the mode once, at import. Set here, in
# every process of the run before Ray is imported, the xdist workers that connect to the shared
# instance (and the CLIs they start) present the token too.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# API keys in the environment: Ray workers inherit this process's environment, so an app with
# `auth.api_keys_env: ZSC_TEST_API_KEYS` reads them as a pod reads ZSC_API_KEYS (test_auth).
# Random per run: set in the pytest process that starts first (xdist's controller), inherited by
# its workers and so by the Ray they share. No other app reads this variable.
ENV_KEYS_VAR = "ZSC_TEST_API_KEYS"
os.environ.setdefault(ENV_KEYS_VAR, "erin:erin-" + secrets.token_hex(12))
ENV_KEYS = dict(pair.split(":", 1) for pair in os.environ[ENV_KEYS_VAR].split(","))

# Ray's CPUs are a placement budget here, not cores. A replica's threads follow its own
# reservation (serve_app/engine/threads.py: OMP_NUM_THREADS, which Ray sets to the floor of the
# replica's num_cpus, at least 1; `num_cpus: auto` is capped by the affinity mask), so a 0.5-CPU
# Classifier runs one thread whatever the total says, and Ray starts workers at most as many
# at a time as there are real cores.
# What the total decides is what may be placed at once: `zsc` all session (0.6) beside each
# worker's module apps (test_page, test_hf, test_onnx: 1.2 more), a redeploy's old and new
# replicas (test_graceful), up to 2 autoscaled ones. That peak (~1.8 a worker) leaves no room on
# a 2-core machine and does not fit on 1 core, and a replica Ray cannot place never fails: it
# waits, PENDING, until the test times out. 16 places everything for several workers on any
# machine; ZSC_TEST_CPUS=N overrides it.
TEST_RAY_CPUS = 16

from serve_app.devtools.ports import free_port  # noqa: E402
from serve_app.devtools.test_models import build_test_model  # noqa: E402

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ runs on real Ray: mark it so `make test-fast` (the
    in-process tests alone) leaves it out. Ray's modules run first: `make test` deals whole
    modules to its workers in this order, and the long ones are Ray's, so the short in-process
    ones fill in at the end instead of one long module finishing alone."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.ray)
    items.sort(key=lambda item: item.get_closest_marker("ray") is None)  # stable: order kept


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test run that all its xdist workers share (their base temp
    directories' parent; the base temp itself without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def run_lock(tmp_path_factory: pytest.TempPathFactory, name: str) -> FileLock:
    """A file lock of this test run, held by one of its xdist workers at a time."""
    return FileLock(shared_dir(tmp_path_factory) / f"{name}.lock")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once a run: the workers' apps on the shared Ray load the same directory."""
    with run_lock(tmp_path_factory, "tiny-model"):
        path = shared_dir(tmp_path_factory) / "models" / "tiny"
        if not (path / "config.json").exists():
            build_test_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Any:
    """The tiny model in an in-process Engine (no Ray), shared by the in-process HTTP tests."""
    from serve_app.config import ModelConfig
    from serve_app.engine.engine import Engine

    return Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))


@pytest.fixture(scope="session")
def edge_server(
    tiny_model_dir: Path, tiny_engine: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Serve the real FastAPI app in this process on a real socket (tests/edge.py): call it with
    AppConfig overrides; returns the URL. A rate limit decides in-process; jobs (when enabled)
    run in the JobRunner's own class in this process, on a store of their own."""
    import contextlib

    import edge

    from serve_app.config import AppConfig

    with contextlib.ExitStack() as servers:

        def serve(*, environ: dict[str, str] | None = None, **overrides: Any) -> str:
            store = tmp_path_factory.mktemp("edge-jobs") / "jobs.sqlite3"
            overrides.setdefault("jobs", {"enabled": False})
            overrides["jobs"] = {"db_path": str(store), **overrides["jobs"]}
            config = AppConfig.model_validate({"model": str(tiny_model_dir), **overrides})
            scorer = edge.EngineScorer(tiny_engine)
            limiter = edge.local_limiter(config.rate_limit) if config.rate_limit.enabled else None
            jobs = edge.local_jobs(config, scorer) if config.jobs.enabled else None
            app = edge.edge_app(config, scorer, jobs=jobs, limiter=limiter, environ=environ)
            url: str = servers.enter_context(edge.serving(app))
            return url

        yield serve


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models with their ONNX files (tests/onnx_models.py), exported once a session."""
    from onnx_models import build_onnx_models

    return build_onnx_models(tmp_path_factory.mktemp("onnx-models"))


@pytest.fixture(scope="session")
def serve_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ray and Serve, once a run; yields the HTTP base URL of the Serve proxy.

    The first worker to ask starts them in its own process (a fresh local instance, never a
    cluster some `ray start` left running) and the others connect: one Ray's start and upkeep
    instead of one per worker. Each worker signs in under a file of its own; the starting one
    stops Ray when no other is signed in."""
    import ray
    from ray import serve

    shared = shared_dir(tmp_path_factory)
    lock = run_lock(tmp_path_factory, "ray")
    info_path, users = shared / "ray.json", shared / "ray-users"
    me = users / str(os.getpid())
    logs = os.environ.get("ZSC_TEST_RAY_LOGS") == "1"
    with lock:
        started = not info_path.exists()
        if started:
            ray.init(
                address="local",
                num_cpus=int(os.environ.get("ZSC_TEST_CPUS", TEST_RAY_CPUS)),
                include_dashboard=False,
                log_to_driver=logs,
                namespace="zsc-tests",
            )
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            info = {"address": ray.get_runtime_context().gcs_address, "port": port}
            info_path.write_text(json.dumps(info))
        else:
            info = json.loads(info_path.read_text())
            ray.init(address=info["address"], log_to_driver=logs, namespace="zsc-tests")
        users.mkdir(exist_ok=True)
        me.touch()
    yield f"http://127.0.0.1:{info['port']}"
    with lock:
        me.unlink()
    # Until the other workers are done with it (a worker that died is not waited for): checked
    # and given up under the lock, so no worker connects to a Ray that is about to stop.
    while started:
        with lock:
            if not any(_alive(int(u.name)) for u in users.iterdir()):
                info_path.unlink()
                break
        time.sleep(0.5)
    # In the process that started the local cluster, ray.shutdown() stops all of it, Serve's
    # actors and every replica included, in about a second (serve.shutdown() first would stop
    # each replica gracefully, seconds more, only for the cluster to go anyway); elsewhere it
    # disconnects.
    ray.shutdown()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def deploy_app(serve_instance: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Deploy `build_app` with overrides under its own name and prefix; returns its base URL."""
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppConfig

    # Each app gets its own job store in a temporary directory (the default path is relative to
    # the job runner's working directory, and two apps must never share one store).
    jobs_dir = tmp_path_factory.mktemp("job-stores")

    def deploy(name: str, **overrides: Any) -> str:
        # Jobs cost a JobRunner replica: on in apps that pass `jobs` (`{}` for the defaults),
        # off in the others.
        jobs = overrides.pop("jobs", {"enabled": False})
        if "store" not in jobs:
            jobs = {"db_path": str(jobs_dir / f"{name}.sqlite3"), **jobs}
        args: dict[str, Any] = {
            "model": str(tiny_model_dir),
            "classifier": {"num_cpus": 0.5},
            "ingress": {"num_cpus": 0.1},
            "jobs": jobs,
        }
        args.update(overrides)
        prefix = "/" if name == "zsc" else f"/{name}"
        serve.run(build_app(AppConfig.model_validate(args)), name=name, route_prefix=prefix)
        if name != "zsc":
            _deployed_this_module.add(name)
        return serve_instance.rstrip("/") + ("" if prefix == "/" else prefix)

    return deploy


@pytest.fixture(scope="session")
def apply_serve_config(serve_instance: str, tmp_path_factory: pytest.TempPathFactory):
    """`apply(name, config)`: deploy one application from its config, as `serve deploy` and
    KubeRay do (Serve's declarative API); `apply(name, None)` deletes it.

    Applying a config deletes every declaratively deployed app it does not name, and the xdist
    workers share one Serve: each apply names all of this run's (kept in a file beside the
    Ray), so one worker's never removes another's. Those it names unchanged stay as they are."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    path = shared_dir(tmp_path_factory) / "declarative-apps.json"

    def apply(name: str, config: dict[str, Any] | None) -> None:
        with run_lock(tmp_path_factory, "declarative-apps"):
            apps = json.loads(path.read_text()) if path.exists() else {}
            if config is None:
                apps.pop(name, None)
                serve.delete(name)
            else:
                apps[name] = {**config, "name": name}
                schema = ServeDeploySchema.model_validate({"applications": list(apps.values())})
                _get_global_client().deploy_apps(schema)
            path.write_text(json.dumps(apps))

    return apply


# Apps a test module deployed besides `zsc`; deleted when the module ends so their replicas
# don't crowd the 2-core CI machine for the rest of the session.
_deployed_this_module: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def _delete_module_apps() -> Iterator[None]:
    yield
    if not _deployed_this_module:
        return
    for name in sorted(_deployed_this_module):
        delete_app(name)
    _deployed_this_module.clear()


def delete_app(name: str) -> None:
    """Delete an app and its rate-limiter shards, which are detached and would outlive it."""
    from ray import serve

    from serve_app.deployments.limiter import remove_limiters

    # Not blocking: nothing waits on a deleted app (names are unique per module, and the session
    # has CPUs to spare), and a blocking delete waits out each replica's graceful-shutdown loop.
    serve.delete(name, _blocking=False)
    remove_limiters(name)  # none if the app never ran with a rate limit


@pytest.fixture(scope="session")
def zsc_url(deploy_app, serve_instance: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default application, `zsc`, on the tiny model: deployed by the first worker to ask,
    found running by the others (deploying it again would replace its replicas under them)."""
    from live import app_running

    # Jobs on, as in `make run`.
    with run_lock(tmp_path_factory, "zsc"):
        return serve_instance if app_running("zsc") else deploy_app("zsc", jobs={})


@pytest.fixture(scope="session")
def zsc_handle(zsc_url: str):
    from ray import serve

    return serve.get_app_handle("zsc")


@pytest.fixture
def hf_client_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Let InferenceClient reach 127.0.0.1, with no telemetry and no token but the test's own;
    returns where the client looks for a cached token. huggingface_hub reads HF_HUB_OFFLINE
    (set above) once, at import, so the constants are patched in this process."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    token_path = tmp_path / "hf-home" / "token"
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(token_path.parent / "stored"))
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    return token_path


@pytest.fixture
def cached_hf_token(hf_client_online: Path) -> Iterator[str]:
    """A token as `hf auth login` caches it; InferenceClient sends it when no token= is given."""
    token = "hf_" + secrets.token_hex(17)
    hf_client_online.parent.mkdir(parents=True, exist_ok=True)
    hf_client_online.write_text(token)
    yield token


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (the system's binaries: `make postgres`);
    yields its URL. Tests take a fresh database each from `tests/stores.py`."""
    from serve_app.devtools.postgres import temporary_postgres

    with temporary_postgres() as url:
        yield url


@pytest.fixture(params=("sqlite", "postgres"))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh job store of each kind (tests/stores.py): every store test runs on both."""
    from stores import fresh_store_url

    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else ""
    return fresh_store_url(request.param, tmp_path, server)


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    from serve_app.jobs.opening import open_store

    s = open_store(store_url)
    yield s
    s.close()
