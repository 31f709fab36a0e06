"""`POST /v1/classify`: zsc's own shape, an answer now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from serve_app.http.admission import admit
from serve_app.http.render import classify_response_body
from serve_app.http.routes.services import ServicesDep
from serve_app.http.schemas import ClassifyRequest, ClassifyResponse

router = APIRouter(tags=["classify"])


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    summary="Classify texts against labels now",
)
async def classify(
    body: ClassifyRequest, request: Request, response: Response, svc: ServicesDep
) -> Any:
    prepared = body.prepared(svc.config)
    # Overload first: a request refused for it costs the caller no rate-limit tokens.
    with svc.inflight.hold(prepared.pairs):
        await admit(svc.rate_limiter, request, response, prepared.pairs)
        classification = await svc.scorer.classify(prepared)
    return classify_response_body(classification)
