"""ASGI guard that refuses a scoring request before its body is read while the ingress's scoring
is full (`ingress.max_scoring_pairs` reached): under a flood most requests are refused, and this
way each refusal costs no JSON parse, validation or depth scan. A request arriving while there is
room still meets the exact check in its route (`InflightPairs.hold`), once its pairs are known.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.core.errors import Overloaded
from serve_app.core.inflight import SCORING_FULL_MESSAGE, InflightPairs
from serve_app.http.errors import retry_later
from serve_app.observability.metrics import ErrorMetrics


class RefuseWhenFull:
    """Pure ASGI middleware: a JSON 503 `overloaded` with Retry-After for a POST to a scoring
    path while no pair more fits."""

    def __init__(self, app: ASGIApp, inflight: InflightPairs, paths: frozenset[str]):
        self.app = app
        self.inflight = inflight
        self.paths = paths
        self.metrics = ErrorMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.inflight.full and scope["method"] == "POST":
            # Under a Serve route_prefix the path carries the prefix as its root_path.
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            if path not in self.paths:
                await self.app(scope, receive, send)
                return
            self.inflight.refused += 1
            self.metrics.count(Overloaded.type, "ingress")
            await retry_later(Overloaded.type, SCORING_FULL_MESSAGE)(scope, receive, send)
            return
        await self.app(scope, receive, send)
