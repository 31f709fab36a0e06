"""Health, the served model, and the web page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from serve_app.http.routes.services import ServicesDep

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get("/healthz", summary="Liveness of this ingress replica", tags=["meta"])
async def healthz() -> dict[str, str]:
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
        "prefilter": {"model": prefilter.model, "top_k": prefilter.top_k}
        if prefilter.enabled
        else None,
    }


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
