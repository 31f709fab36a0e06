"""The HTTP API: a FastAPI app built per ingress replica around that replica's `Services`.

Routes stay thin: validate (pydantic, then `serve_app.core.requests`), admit (auth, rate limit),
score through the `Scorer`, and render the typed answer in their own shape. Every failure is
`{"error": {"type", "message"}}` (`serve_app.http.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI

from serve_app.config import AppConfig
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.http.admission import Admission
from serve_app.http.errors import install_error_handlers
from serve_app.http.middleware.auth import ApiKeys, install_auth
from serve_app.http.middleware.body_guard import BodyGuard
from serve_app.http.routes.classify import classify_router
from serve_app.http.routes.hf import hf_router
from serve_app.http.routes.jobs import jobs_router
from serve_app.http.routes.meta import meta_router


class Scoring(Protocol):
    """Scores a validated request: the prefilter when it applies, then the cross-encoder."""

    async def classify(self, request: PreparedRequest) -> Classification: ...

    async def check(self, request: PreparedRequest) -> None: ...

    async def model_info(self) -> dict[str, Any]: ...


@dataclass
class Services:
    """What the routes need; one per ingress replica."""

    config: AppConfig
    scorer: Scoring
    jobs: Any = None  # the JobRunner's handle; None when jobs.enabled is false
    rate_limiter: Admission | None = None  # None when rate_limit.enabled is false
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys({}))  # none: everything is open


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(
        title="zsc: zero-shot text classification",
        version="0.2.0",
        description="Classify any text into labels you make up on the spot, with an NLI "
        "cross-encoder on Ray Serve.",
    )
    app.state.services = svc
    app.add_middleware(
        BodyGuard,
        max_body_bytes=svc.config.limits.max_body_bytes,
        max_json_depth=svc.config.limits.max_json_depth,
        body_timeout_s=svc.config.limits.body_timeout_s,
    )
    # Last added runs first: a caller without a key never gets its body read.
    install_auth(app, svc.api_keys)
    install_error_handlers(app)
    app.include_router(classify_router(svc))
    if svc.jobs is not None:
        app.include_router(jobs_router(svc))
    app.include_router(hf_router(svc))
    app.include_router(meta_router(svc))
    return app
