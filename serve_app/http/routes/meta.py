"""Health, the served model, and the web page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from serve_app.core.errors import error_body
from serve_app.http.middleware.auth import auth_summary
from serve_app.http.routes.services import ServicesDep

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get(
    "/healthz",
    summary="Readiness: every deployment of the app has a replica that answers",
    tags=["meta"],
    responses={503: {"description": "A deployment has no replica that answers (named)."}},
)
async def healthz(svc: ServicesDep) -> Any:
    missing = await svc.liveness.missing(svc.config.health_timeout_s)
    if missing:
        names = ", ".join(missing)
        message = (
            f"not ready: {names} did not answer within {svc.config.health_timeout_s:g} s "
            "(starting, not placed, or failed: see `serve status`)"
        )
        return JSONResponse(
            status_code=503,
            content={**error_body("not_ready", message), "missing": missing},
            headers={"Retry-After": "5"},
        )
    return {"status": "ok"}


@router.get("/v1/model", summary="The served model and its settings", tags=["meta"])
async def model_info(svc: ServicesDep) -> dict[str, Any]:
    prefilter = svc.config.prefilter
    return {
        **await svc.scorer.model_info(),
        # The preset `model` named (its hub id is "model"), and the template of requests that
        # give none.
        "preset": svc.config.preset,
        "hypothesis_template": svc.config.default_hypothesis_template,
        "limits": svc.config.limits.model_dump(),
        "auth": auth_summary(svc.config.auth, svc.api_keys),
        "prefilter": {
            "model": prefilter.model,
            "revision": prefilter.revision,
            "top_k": prefilter.top_k,
        }
        if prefilter.enabled
        else None,
    }


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
