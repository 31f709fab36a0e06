"""The HTTP API: a FastAPI app built per ingress replica around that replica's `Services`.

Routes stay thin: validate (pydantic + `prepare_body`), admit (auth, rate limit), call the
Classifier through its handle, and render every failure as `{"error": {"type", "message"}}`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.auth import ApiKeys, install_auth
from serve_app.config import AppConfig
from serve_app.errors import ClientError, ServiceUnavailable, error_body
from serve_app.http_guards import BodyGuard
from serve_app.jobs.api import build_jobs_router
from serve_app.limiter import ANONYMOUS_KEY, RateLimitClient
from serve_app.schemas import ClassifyRequest, ClassifyResponse, prepare_body

log = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class Services:
    """What the routes need; one per ingress replica."""

    config: AppConfig
    classifier: DeploymentHandle
    jobs: DeploymentHandle | None = None  # the JobRunner; None when jobs.enabled is false
    rate_limiter: RateLimitClient | None = None  # None when rate_limit.enabled is false
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys({}))  # none: /v1 is open
    extras: dict[str, Any] = field(default_factory=dict)


def services(request: Request) -> Services:
    return request.app.state.services


def client_key(request: Request) -> str:
    """Whose bucket pays: the API key's name when auth identified one, else the client address."""
    key_name = getattr(request.state, "api_key_name", None)
    if key_name:
        return key_name
    return request.client.host if request.client else ANONYMOUS_KEY


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "invalid_json", "the body is not valid JSON; send a JSON object"
    not_an_object = {"model_attributes_type", "dict_type", "missing"}
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") in not_an_object for e in errors):
        return 400, "invalid_json", (
            "the body must be a JSON object (Content-Type: application/json), "
            'e.g. {"text": "...", "labels": ["a", "b"]}'
        )
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "invalid_request", "; ".join(parts)


def retry_later(type_: str, message: str, retry_after_s: int = 1) -> JSONResponse:
    """A 503 that says when to send the same request again."""
    return JSONResponse(
        error_body(type_, message), status_code=503, headers={"Retry-After": str(retry_after_s)}
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, type_, message = _validation_message(exc)
        return JSONResponse(error_body(type_, message), status_code=status)

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(type_, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return retry_later("unavailable", exc.message, exc.retry_after_s)

    @app.exception_handler(BackPressureError)
    async def _backpressure(_: Request, exc: BackPressureError) -> JSONResponse:
        return retry_later("overloaded", "the classifier queue is full; retry after 1 second")

    @app.exception_handler(RayServeException)
    async def _serve_error(_: Request, exc: RayServeException) -> JSONResponse:
        log.warning("serve error while answering: %s", exc)
        return retry_later("unavailable", "a replica failed while answering; retry after 1 second")

    # A Classifier or JobRunner replica died or became unreachable while answering (a crash, a
    # node loss, ray.kill): Serve replaces it within seconds, so the same request will pass then.
    @app.exception_handler(RayActorError)
    async def _replica_died(_: Request, exc: RayActorError) -> JSONResponse:
        log.warning("replica died while answering: %s", type(exc).__name__)
        return retry_later("unavailable", "a replica died while answering; retry after 1 second")

    # A bug of ours still answers in the error envelope (never a traceback), and with a type
    # clients must not retry: the same request would fail the same way. Only Serve's own proxy
    # answers a plain-text 500, when the ingress replica holding the request died.
    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error while answering")
        return JSONResponse(
            error_body("internal_error", "the server failed to answer; this is a zsc bug"),
            status_code=500,
        )


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(
        title="zsc: zero-shot text classification",
        version="0.1.0",
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
    if svc.jobs is not None:
        app.include_router(build_jobs_router(svc.config, svc.jobs))

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        summary="Classify texts against labels now",
    )
    async def classify(body: ClassifyRequest, request: Request, response: Response) -> Any:
        prepared = prepare_body(body, svc.config.limits)
        if svc.rate_limiter is not None:
            # After validation, so a malformed request is a 4xx that costs no tokens.
            limiter = svc.rate_limiter
            decision = await limiter.admit(client_key(request), limiter.cost_of(prepared.pairs))
            if decision is not None:
                response.headers.update(decision.headers())
        return await svc.classifier.classify_prepared.remote(prepared)

    @app.get("/healthz", summary="Liveness of this ingress replica")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", summary="The served model and its settings")
    async def model_info() -> dict[str, Any]:
        return await svc.classifier.model_info.remote()

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app
