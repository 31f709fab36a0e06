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
import re

import numpy as np
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.core.errors import error_body

# After escapes are gone every quote delimits a string, so a string is `"` then anything but `"`:
# one character class, which the regex engine scans in a tight loop, and no backtracking.
_STRING = re.compile(rb'"[^"]*"')
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
# Opening brackets become +1 and closing ones -1 (0xFF as int8), so depth is a running sum.
_STEPS = bytes.maketrans(_BRACKETS, b"\x01\xff\x01\xff")
# Depth is summed this many brackets at a time, so memory stays bounded whatever the body.
_CHUNK = 1 << 20


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when the JSON text nests arrays/objects deeper than max_depth (strings skipped).

    Linear and at C speed: escapes are removed first (`\\\\` pairs, then `\\"`; outside a
    string a backslash is not JSON, so pairing them left to right is what a parser does), then
    strings, then everything but brackets, and the depth is the running sum of what is left.
    A body that is not JSON may be called deep where a parser would refuse it anyway: both 400.
    """
    # Cheap pre-check: a body with few brackets cannot be deep (the common case: lists of texts).
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    if b'"' in body:
        body = _STRING.sub(b"", body)
    steps = body.translate(_STEPS, _NOT_BRACKETS)
    if steps.count(1) <= max_depth:
        return False
    signed = np.frombuffer(steps, np.int8)
    depth = 0
    for start in range(0, len(signed), _CHUNK):
        running = np.cumsum(signed[start : start + _CHUNK], dtype=np.int32)
        if depth + int(running.max()) > max_depth:
            return True
        depth += int(running[-1])
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
            await _reject(scope, receive, send, 413, "body_too_large", self._too_large())
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except _BodyTooLarge:
            await _reject(scope, receive, send, 413, "body_too_large", self._too_large())
            return
        except asyncio.TimeoutError:
            await _reject(
                scope,
                receive,
                send,
                408,
                "body_timeout",
                f"the request body did not arrive within limits.body_timeout_s="
                f"{self.body_timeout_s:g} seconds",
            )
            return
        if json_depth_exceeds(body, self.max_json_depth):
            await _reject(
                scope,
                receive,
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
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _reject(
    scope: Scope, receive: Receive, send: Send, status: int, type: str, message: str
) -> None:
    # Connection: close, as the rest of the body may be left unread on the socket.
    response = JSONResponse(
        error_body(type, message), status_code=status, headers={"connection": "close"}
    )
    await response(scope, receive, send)
