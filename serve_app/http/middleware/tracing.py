"""ASGI middleware that opens each request's trace: the `zsc.ingress` span, a child of the
caller's W3C `traceparent` when one is sent. Installed only when tracing is on."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.observability import tracing


class TraceRequests:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                tracing.set_attribute("http.response.status_code", message["status"])
            await send(message)

        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        parent = Headers(scope=scope).get("traceparent")
        with tracing.span("zsc.ingress", parent, attributes):
            await self.app(scope, receive, send_with_status)
