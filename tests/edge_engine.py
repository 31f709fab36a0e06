"""The FastAPI app in-process over a real in-process Engine: the HTTP edge without Ray.

`EngineScorer` implements the routes' `Scoring` with the engine on the tiny model, so a test
posts real bodies through `httpx.ASGITransport` and gets real scores.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from edge import EngineScorer

from serve_app.config import AppConfig
from serve_app.engine.engine import Engine
from serve_app.http.app import create_app
from serve_app.http.routes.services import Services


def post(engine: Engine, path: str, body: Any, **config: Any) -> httpx.Response:
    """POST `body` to the app built on `engine` and the config overrides; the response."""
    settings = AppConfig.model_validate(
        {"model": engine.source, "jobs": {"enabled": False}, **config}
    )
    app = create_app(Services(config=settings, scorer=EngineScorer(engine)))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://zsc") as client:
            return await client.post(path, json=body)

    return asyncio.run(send())


def openapi(engine: Engine) -> dict[str, Any]:
    settings = AppConfig.model_validate({"model": engine.source, "jobs": {"enabled": False}})
    schema: dict[str, Any] = create_app(
        Services(config=settings, scorer=EngineScorer(engine))
    ).openapi()
    return schema
