"""Shared fixtures: one tiny random NLI model and one local Ray/Serve instance per session.

Ray starts once (about 8 s) and every integration test deploys into it. Tests that need their
own configuration deploy another application under its own name and route prefix with
`deploy_app`, so they never disturb the default `zsc` app.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# API keys in the environment: Ray workers inherit this process's environment, so an app with
# `auth.api_keys_env: ZSC_TEST_API_KEYS` reads them as a pod reads ZSC_API_KEYS (test_auth).
# Random per session; no other app reads this variable.
ENV_KEYS_VAR = "ZSC_TEST_API_KEYS"
ENV_KEYS = {"erin": "erin-" + secrets.token_hex(12)}
os.environ[ENV_KEYS_VAR] = ",".join(f"{name}:{key}" for name, key in ENV_KEYS.items())

# Ray's CPUs are a placement budget here, not cores. A replica's threads follow its own
# reservation (serve_app/engine/threads.py: OMP_NUM_THREADS, which Ray sets to the floor of the
# replica's num_cpus, at least 1; `num_cpus: auto` is capped by the affinity mask), so a 0.5-CPU
# Classifier runs one thread whatever the total says, and Ray starts workers at most as many
# at a time as there are real cores.
# What the total decides is what may be placed at once: `zsc` all session (0.6) beside a
# module's own apps (test_page, test_hf, test_onnx: 1.2 more), a redeploy's old and new
# replicas (test_graceful), up to 2 autoscaled ones. That peak (~1.8) leaves no room on a 2-core
# machine and does not fit on 1 core, and a replica Ray cannot place never fails: it waits,
# PENDING, until the test times out. 8 places everything on any machine; ZSC_TEST_CPUS=N
# overrides it.
TEST_RAY_CPUS = 8

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("models") / "tiny")


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
def serve_instance() -> Iterator[str]:
    """Start Ray and Serve once; yields the HTTP base URL of the Serve proxy."""
    import ray
    from ray import serve

    # address="local": always a fresh instance, never a cluster some `ray start` left running.
    ray.init(
        address="local",
        num_cpus=int(os.environ.get("ZSC_TEST_CPUS", TEST_RAY_CPUS)),
        include_dashboard=False,
        log_to_driver=os.environ.get("ZSC_TEST_RAY_LOGS") == "1",
        namespace="zsc-tests",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    # This process started the local cluster, so ray.shutdown() stops all of it, Serve's actors
    # and every replica included, in about a second; serve.shutdown() first would stop each
    # replica gracefully (seconds more) only for the cluster to go anyway.
    ray.shutdown()


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
        # Jobs cost a JobRunner replica: on in `zsc` and in apps that pass `jobs` (`{}` for the
        # defaults), off in the others.
        jobs = overrides.pop("jobs", {} if name == "zsc" else {"enabled": False})
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
def zsc_url(deploy_app) -> str:
    """The default application, `zsc`, on the tiny model."""
    return deploy_app("zsc")


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
