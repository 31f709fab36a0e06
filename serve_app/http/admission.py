"""Admission of one request through the shared rate limit, for every route that scores."""

from __future__ import annotations

from typing import Protocol

from fastapi import Request, Response

from serve_app.core.ratelimit import Decision
from serve_app.http.identity import client_key
from serve_app.observability import tracing


class Admission(Protocol):
    """The rate limiter as routes see it (`serve_app.deployments.limiter.RateLimitClient`)."""

    def cost_of(self, pairs: int) -> float: ...

    async def admit(self, key: str, cost: float) -> Decision | None:
        """Pay for one request now, or raise RateLimited / LimitExceeded / ServiceUnavailable;
        None when the limiter did not answer and fails open."""
        ...


async def admit(
    limiter: Admission | None, request: Request, response: Response, pairs: int
) -> None:
    """Charge the caller's bucket for `pairs` pairs; the decision's headers go on the answer.

    Called after validation, so a malformed request is a 4xx that costs no tokens."""
    if limiter is None:
        return
    with tracing.span("zsc.rate_limit"):
        decision = await limiter.admit(client_key(request), limiter.cost_of(pairs))
    if decision is not None:
        response.headers.update(decision.headers())
