"""The HTTP edge in-process: `create_app` around a scorer that runs a real `Engine` here, driven
through `httpx.ASGITransport` (no Ray, no sockets). For tests of what a model setting does to
the answers of `/v1/classify` and `/v1/model`."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from serve_app.config import AppConfig
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.devtools.ports import free_port
from serve_app.engine.engine import Engine
from serve_app.http.app import create_app
from serve_app.http.routes.services import Services


class EngineScorer:
    """`Scoring` by one in-process Engine: what the Classifier deployment does, minus Ray."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def classify(self, request: PreparedRequest) -> Classification:
        return self.engine.classify(request)

    async def check(self, request: PreparedRequest) -> None:
        self.engine.check(request)

    async def model_info(self) -> dict[str, Any]:
        return self.engine.describe()


def call(config: AppConfig, engine: Engine, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the app built for `config` around `engine`; returns the httpx response."""
    app = create_app(Services(config=config, scorer=EngineScorer(engine)))

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://zsc.test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@contextmanager
def serving(config: AppConfig, engine: Engine) -> Iterator[str]:
    """The same app on a real socket (uvicorn in a thread), for a browser; yields its URL."""
    app = create_app(Services(config=config, scorer=EngineScorer(engine)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def hub_cache_with(root: Path, repo_id: str, revision: str, model_dir: Path) -> Path:
    """A Hugging Face hub cache holding `model_dir` as `repo_id` at commit `revision`: what
    `hf download` leaves on a machine that later runs offline."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root
