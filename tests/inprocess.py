"""The HTTP edge in-process: `create_app` around a scorer that runs a real `Engine` here, driven
through `httpx.ASGITransport` (no Ray, no sockets). For tests of what a model setting does to
the answers of `/v1/classify` and `/v1/model`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from serve_app.config import AppConfig
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
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
