"""The HTTP edge in-process: the real FastAPI app (`create_app`) with its middleware, routes and
error handlers, scored by a real `Engine` in this process instead of Classifier replicas.

What the edge does on its own (validation, error envelopes, headers, auth, body limits, route
shapes, the rate limit's answers) needs no Ray: `EngineScorer` implements the same `ScoringService`
interface as the Ray-backed `Scorer`, and `local_limiter` is the limiter actors' client deciding
with one in-process `RateLimiter`. `serving()` puts the app on a real socket
(uvicorn in a thread) for clients that need a URL (huggingface_hub's InferenceClient, the CLI).
What crosses Ray (batching, handles, jobs, the limiter actors) stays in the Ray tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from serve_app.config import AppConfig, RateLimitConfig
from serve_app.core.ratelimit import Decision, RateLimiter
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.deployments.job_runner import JobRunner
from serve_app.deployments.limiter import RateLimitClient
from serve_app.devtools.ports import free_port
from serve_app.engine.engine import Engine
from serve_app.http.app import create_app
from serve_app.http.middleware.auth import ApiKeys
from serve_app.http.routes.services import Services

BASE_URL = "http://zsc.test"


class EngineScorer:
    """`ScoringService` over an in-process Engine: the Classifier's answers, without Ray."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests: list[PreparedRequest] = []  # what reached the model, in order

    async def classify(self, request: PreparedRequest) -> Classification:
        self.requests.append(request)
        return self.engine.classify(request)

    async def check_labels(self, request: PreparedRequest) -> None:
        self.engine.check_labels(request)

    async def model_info(self) -> dict[str, Any]:
        return self.engine.describe()


class FailingScorer(EngineScorer):
    """Raises `error` on every classify: how the edge renders a failure behind it."""

    def __init__(self, engine: Engine, error: BaseException) -> None:
        super().__init__(engine)
        self.error = error

    async def classify(self, request: PreparedRequest) -> Classification:
        raise self.error


def local_limiter(config: RateLimitConfig, seen: list[str] | None = None) -> RateLimitClient:
    """The ingress's rate-limit client, its buckets in one in-process `RateLimiter` instead of
    limiter actors: the same admission rules, answers and headers. `seen` collects the client
    key of every admission, in order."""
    buckets = RateLimiter(config)

    async def decide(key: str, cost: float) -> Decision:
        if seen is not None:
            seen.append(key)
        return buckets.try_acquire(key, cost)

    return RateLimitClient(config, decide=decide)


class LocalHandle:
    """A DeploymentHandle's calling convention over an object in this process:
    `handle.method.remote(*args)` awaits `obj.method(*args)`. The object is made on the first
    call, inside the serving event loop (a JobRunner starts its loops on the running loop)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._target: Any = None

    def __getattr__(self, name: str) -> Any:
        handle = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                async def call() -> Any:
                    if handle._target is None:
                        handle._target = handle._factory()
                    return await getattr(handle._target, name)(*args, **kwargs)

                return call()

        return Method()


def local_jobs(config: AppConfig, scorer: Any) -> LocalHandle:
    """The JobRunner deployment's own class, in this process: the real scheduler, store and
    webhook outbox, scoring through `scorer`, reached the way the routes reach the replica."""
    runner = JobRunner.func_or_class
    return LocalHandle(lambda: runner(config.jobs, scorer, None))


def edge_app(
    config: AppConfig,
    scorer: Any,
    *,
    jobs: Any = None,
    limiter: Any = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The ingress replica's FastAPI app for `config`, around the given parts."""
    return create_app(
        Services(
            config=config,
            scorer=scorer,
            jobs=jobs,
            rate_limiter=limiter,
            api_keys=ApiKeys.from_config(config.auth, environ or {}),
        )
    )


def asgi_client(app: FastAPI, peer: str = "127.0.0.1", port: int = 50000) -> httpx.AsyncClient:
    """An httpx client that calls the app in this process, as a caller at `peer`:`port`."""
    transport = httpx.ASGITransport(app=app, client=(peer, port))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30)


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a real socket (uvicorn in a thread); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def engine_app(model_dir: Path, **overrides: Any) -> tuple[FastAPI, Services]:
    """The app for the model in `model_dir` with config overrides, around an Engine of its own;
    with its `Services`, for a test to swap a part (the rate limiter, the scorer)."""
    config = AppConfig.model_validate({"model": str(model_dir), **overrides})
    services = Services(
        config=config, scorer=EngineScorer(Engine(config.model_settings(), str(model_dir)))
    )
    return create_app(services), services


def post(engine: Engine, path: str, body: Any, **overrides: Any) -> httpx.Response:
    """POST `body` to the app built on `engine` and the config overrides; the response."""
    config = AppConfig.model_validate(
        {"model": engine.source, "jobs": {"enabled": False}, **overrides}
    )
    response: httpx.Response = call(config, engine, "POST", path, json=body)
    return response


def openapi(engine: Engine) -> dict[str, Any]:
    """The OpenAPI document of the app built on `engine`."""
    config = AppConfig.model_validate({"model": engine.source, "jobs": {"enabled": False}})
    schema: dict[str, Any] = edge_app(config, EngineScorer(engine)).openapi()
    return schema


def call(config: AppConfig, engine: Engine, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the app built for `config` around `engine`; returns the httpx response."""
    app = edge_app(config, EngineScorer(engine))

    async def go() -> httpx.Response:
        async with asgi_client(app) as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


def hub_cache_with(root: Path, repo_id: str, revision: str, model_dir: Path) -> Path:
    """A Hugging Face hub cache holding `model_dir` as `repo_id` at commit `revision`: what
    `hf download` leaves on a machine that later runs offline."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root
