"""ASGI guard that bounds what a client can make the server read and parse.

Runs before FastAPI touches the body: a body over `max_body_bytes` is a 413 (by Content-Length
at once, or while streaming for chunked uploads), and JSON nested deeper than `max_json_depth`
is a 400, since Python's json parser would otherwise recurse until it fails with a 500. A body
that takes longer than `body_timeout_s` to arrive is a 408: Serve's proxy streams the body to
the replica and has no read timeout of its own (and a client can switch its request timeout off
with the `x-request-timeout-seconds: 0` header), so without this a slow-loris client would hold
one of the ingress replica's `max_ongoing_requests` slots for as long as it liked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.core.errors import error_body


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when the JSON text nests arrays/objects deeper than max_depth (strings skipped)."""
    # Cheap pre-check: a body with few brackets cannot be deep (the common case: lists of texts).
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


class _BodyTooLarge(Exception):
    pass


class BodyGuard:
    """Pure ASGI middleware: size and depth bounds on request bodies."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_json_depth: int, body_timeout_s: float
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _reject(send, 413, "body_too_large", self._too_large())
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except _BodyTooLarge:
            await _reject(send, 413, "body_too_large", self._too_large())
            return
        except asyncio.TimeoutError:
            await _reject(
                send,
                408,
                "body_timeout",
                f"the request body did not arrive within limits.body_timeout_s="
                f"{self.body_timeout_s:g} seconds",
            )
            return
        if json_depth_exceeds(body, self.max_json_depth):
            await _reject(
                send,
                400,
                "invalid_json",
                f"JSON body nests deeper than limits.max_json_depth={self.max_json_depth}",
            )
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for disconnect like Starlette does

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return (
            f"request body exceeds limits.max_body_bytes={self.max_body_bytes} bytes; "
            "send fewer texts per request or submit a job (POST /v1/jobs)"
        )

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Send, status: int, type: str, message: str) -> None:
    payload: dict[str, Any] = error_body(type, message)
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
