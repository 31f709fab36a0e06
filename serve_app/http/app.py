"""The HTTP API: a FastAPI app built per ingress replica around that replica's `Services`.

Routes stay thin: validate (pydantic, then `serve_app.core.requests`), admit (auth, rate limit),
score through the `Services.scorer`, and render the typed answer in their own shape. Every
failure is `{"error": {"type", "message"}}` (`serve_app.http.errors`).
"""

from __future__ import annotations

from fastapi import FastAPI

from serve_app import __version__
from serve_app.http.errors import install_error_handlers
from serve_app.http.middleware.auth import install_auth
from serve_app.http.middleware.body_guard import BodyGuard
from serve_app.http.middleware.deadline import RequestDeadline
from serve_app.http.middleware.overload import RefuseWhenFull
from serve_app.http.middleware.tracing import TraceRequests
from serve_app.http.routes import classify, hf, jobs, meta
from serve_app.http.routes.services import Services
from serve_app.observability import tracing


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(
        title="zsc: zero-shot text classification",
        version=__version__,
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
    if svc.inflight.max_pairs:
        # Before the body is read: under a flood most requests are refused, and cheaply.
        app.add_middleware(
            RefuseWhenFull, inflight=svc.inflight, paths=frozenset({"/v1/classify", *hf.ROUTES})
        )
    # Last added runs first: a caller without a key never gets its body read.
    install_auth(app, svc.api_keys)
    if tracing.enabled():
        app.add_middleware(TraceRequests)
    if svc.config.request_timeout_s is not None:
        # Outermost: the bound covers the whole request, the body and the key check included.
        app.add_middleware(RequestDeadline, request_timeout_s=svc.config.request_timeout_s)
    install_error_handlers(app)
    app.include_router(classify.router)
    if svc.jobs is not None:
        app.include_router(jobs.router)
    app.include_router(hf.router)
    app.include_router(meta.router)
    return app
