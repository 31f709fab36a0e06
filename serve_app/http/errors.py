"""Every failure rendered as `{"error": {"type", "message"}}`, with a status that says whose fault
it is: 4xx for what the client must fix, 503 + Retry-After for what will pass when resent, and a
JSON 500 of type `internal_error` for a zsc bug (never a traceback)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.core.errors import OVERLOADED_MESSAGE, ClientError, ServiceUnavailable, error_body
from serve_app.observability.metrics import ErrorMetrics

log = logging.getLogger("ray.serve")


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """(status, type, message) of a body pydantic refused."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "invalid_json", "the body is not valid JSON; send a JSON object"
    not_an_object = {"model_attributes_type", "dict_type", "missing"}
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") in not_an_object for e in errors):
        return (
            400,
            "invalid_json",
            (
                "the body must be a JSON object (Content-Type: application/json) with the "
                "route's fields; /docs lists them"
            ),
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
    metrics = ErrorMetrics()

    def answer(
        type_: str, message: str, status: int, headers: Mapping[str, str] | None = None
    ) -> JSONResponse:
        metrics.count(type_, "ingress")
        return JSONResponse(error_body(type_, message), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, type_, message = validation_message(exc)
        return answer(type_, message, status)

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
        return answer(exc.type, exc.message, exc.status_code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return answer(type_, str(exc.detail), exc.status_code, exc.headers)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        metrics.count(exc.type, "ingress")
        return retry_later(exc.type, exc.message, exc.retry_after_s)

    # Serve replaces any handler an app registers for BackPressureError (and
    # DeploymentUnavailableError) with its own plain-text one once the app is built, so the
    # Scorer turns them into Overloaded / ServiceUnavailable before they get here. This one
    # serves the in-process app, where Serve does not step in.
    @app.exception_handler(BackPressureError)
    async def _backpressure(_: Request, exc: BackPressureError) -> JSONResponse:
        metrics.count("overloaded", "ingress")
        return retry_later("overloaded", OVERLOADED_MESSAGE)

    @app.exception_handler(RayServeException)
    async def _serve_error(_: Request, exc: RayServeException) -> JSONResponse:
        log.warning("serve error while answering: %s", exc)
        metrics.count("unavailable", "ingress")
        return retry_later("unavailable", "a replica failed while answering; retry after 1 second")

    # A replica died or became unreachable while answering (a crash, a node loss, ray.kill):
    # Serve replaces it within seconds, so the same request will pass then.
    @app.exception_handler(RayActorError)
    async def _replica_died(_: Request, exc: RayActorError) -> JSONResponse:
        log.warning("replica died while answering: %s", type(exc).__name__)
        metrics.count("unavailable", "ingress")
        return retry_later("unavailable", "a replica died while answering; retry after 1 second")

    # A bug of ours still answers in the envelope, with a type clients must not retry: the same
    # request would fail the same way. Only Serve's own proxy answers a plain-text 500, when the
    # ingress replica holding the request died.
    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error while answering")
        return answer("internal_error", "the server failed to answer; this is a zsc bug", 500)
