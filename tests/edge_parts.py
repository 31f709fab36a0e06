"""The HTTP edge in-process: the FastAPI app of `create_app` around a real `Engine` on the tiny
model (no Ray), and the rate limit's real buckets (`RateLimiter`) behind the routes' `Admission`.
Driven through `httpx.ASGITransport`, with the client address set per transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from edge import EngineScorer
from fastapi import FastAPI

from serve_app.config import AppConfig, RateLimitConfig
from serve_app.core.errors import RateLimited
from serve_app.core.ratelimit import Decision, RateLimiter
from serve_app.engine.engine import Engine
from serve_app.http.app import create_app
from serve_app.http.routes.services import Services


class LocalAdmission:
    """`Admission` on one in-process `RateLimiter`: the buckets the limiter actors hold."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.limiter = RateLimiter(config)
        self.keys: list[str] = []

    def cost_of(self, pairs: int) -> float:
        return float(pairs)

    async def admit(self, key: str, cost: float) -> Decision | None:
        self.keys.append(key)
        decision = self.limiter.try_acquire(key, cost)
        if not decision.allowed:
            raise RateLimited("rate limit exceeded", headers=decision.headers())
        return decision


def edge_app(model_dir: Path, **config: Any) -> tuple[FastAPI, Services]:
    app_config = AppConfig.model_validate({"model": str(model_dir), **config})
    services = Services(
        config=app_config, scorer=EngineScorer(Engine(app_config.model_settings(), str(model_dir)))
    )
    return create_app(services), services


def client_from(app: FastAPI, address: str, port: int = 40_000) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, port))
    return httpx.AsyncClient(transport=transport, base_url="http://zsc.test")
