"""Client-facing errors: every mistake a caller can make maps to one of these, never to a 500.

They cross Ray process boundaries (raised in the Classifier, caught in the ingress), so they
pickle by their positional args.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A request the caller must fix. Rendered as `{"error": {"type", "message"}}`."""

    default_status = 422
    default_type = "invalid_request"
    headers: dict[str, str] | None = None  # extra response headers (e.g. Retry-After on a 429)

    def __init__(self, message: str, status_code: int | None = None, type: str | None = None):
        super().__init__(message, status_code, type)
        self.message = message
        self.status_code = status_code or self.default_status
        self.type = type or self.default_type

    def __str__(self) -> str:
        return self.message


class LimitExceeded(ClientError):
    """A configured size limit was breached; the message names the limit and the way out."""

    default_status = 413
    default_type = "limit_exceeded"


class RateLimited(ClientError):
    """The client's token bucket cannot pay for this request now: 429 with the headers that say
    when it can (`Retry-After`, `RateLimit-Policy`, `RateLimit`)."""

    default_status = 429
    default_type = "rate_limited"

    def __init__(self, message: str, headers: dict[str, str]):
        super().__init__(message)
        self.args = (message, headers)  # pickles as RateLimited(message, headers)
        self.headers = headers


class ServiceUnavailable(Exception):
    """A transient server-side condition; clients should retry (503 + Retry-After)."""

    type = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, retry_after_s)
        self.message = message
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message


OVERLOADED_MESSAGE = (
    "the classifier's queue is full; retry after 1 second (or submit large work as a job)"
)


class Overloaded(ServiceUnavailable):
    """A deployment's queue is full: refused at once rather than queued (503 + Retry-After)."""

    type = "overloaded"


class StartupError(SystemExit):
    """Stops `serve run` (or `build_app`) with one readable line instead of a traceback."""


def error_body(type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type, "message": message}}
