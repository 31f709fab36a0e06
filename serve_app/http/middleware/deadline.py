"""ASGI guard that bounds how long one HTTP request may take: `request_timeout_s`.

Serve's proxy has an option of the same name, but an app's args cannot set it, and the proxy
answers its own timeout in plain text. So the ingress bounds each request itself, slightly inside
the configured value (so it answers before a proxy set to the same value gives up), and a request
still unanswered then is a JSON 504 `timeout` with Retry-After. Cancelling the request cancels its
call into the Classifier too. Once an answer has started it is never cut short.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.core.errors import error_body

# The ingress answers this much before the configured timeout, so a proxy set to the same
# value still forwards zsc's JSON instead of its own plain text.
MARGIN_S = 0.5
MARGIN_SHARE = 0.05
RETRY_AFTER_S = 1


def inner_deadline(request_timeout_s: float) -> float:
    """The ingress's own bound: inside `request_timeout_s` by 0.5 s or 5%, whichever is less."""
    return request_timeout_s - min(MARGIN_S, MARGIN_SHARE * request_timeout_s)


class RequestDeadline:
    """Pure ASGI middleware: a JSON 504 for a request not answered within its deadline."""

    def __init__(self, app: ASGIApp, request_timeout_s: float):
        self.app = app
        self.request_timeout_s = request_timeout_s
        self.deadline_s = inner_deadline(request_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        bound = asyncio.timeout(self.deadline_s)

        async def send_once_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                bound.reschedule(None)  # an answer under way is never cut short
            await send(message)

        try:
            async with bound:
                await self.app(scope, receive, send_once_started)
        except TimeoutError:
            # A TimeoutError of the app's own (not this deadline) is not ours to answer.
            if started or not bound.expired():
                raise
            response = JSONResponse(
                error_body(
                    "timeout",
                    f"the request was not answered within request_timeout_s="
                    f"{self.request_timeout_s:g} seconds; retry later, or submit large work "
                    "as a job (POST /v1/jobs)",
                ),
                status_code=504,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            await response(scope, receive, send)
