"""Webhook events, signed per Standard Webhooks 1.0, and their delivery.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`, the key
being the base64 part of a `whsec_` secret. `webhook-id` is the event's id and stays the same on
every retry so receivers can de-duplicate; `webhook-timestamp` is each attempt's Unix seconds.
Events stay small (type, timestamp, the job's id, status and counts): receivers fetch results.
Delivery connects to exactly the address the SSRF guard checked, never follows redirects, and
counts only 2xx as success. The retry schedule lives in the job store's outbox, not here: this
module only says how long to wait before the next attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

from serve_app.config import WebhookConfig
from serve_app.core.errors import ClientError
from serve_app.jobs.models import Job
from serve_app.jobs.ssrf import ResolvedTarget, check_callback_url

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes
JITTER = 0.1  # ±10% on each retry delay, so receivers that were down are not hit in lockstep
USER_AGENT = "zsc-webhooks/1"


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt: `ok` only for a 2xx answer; `status_code` is None when none came back."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_s: float


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # validate=True: a mistyped secret must fail loudly, not sign with a key made of
        # whatever characters base64 happened to skip.
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signatures(secret: str | Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one `v1,` signature per secret, space-separated (Standard
    Webhooks), so during a rotation a receiver that knows either secret verifies the event."""
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys:
        raise ValueError("no webhook secret to sign with")
    return " ".join(sign(key, webhook_id, timestamp, body) for key in keys)


def tenant_secrets(config: WebhookConfig, default: str | None, tenant: str) -> list[str]:
    """A tenant's secrets, newest first: its own (`tenant_secrets`), else the server's."""
    own = config.tenant_secrets.get(tenant)
    if own:
        return [secret.get_secret_value() for secret in own]
    return [] if default is None else [default]


def build_event(event_type: str, job: Job) -> dict[str, Any]:
    """A small event: what happened to which job, with its counts; receivers fetch results."""
    data: dict[str, Any] = {
        "id": job.id,
        "status": job.state,
        "progress": job.progress.model_dump(),
    }
    if job.error is not None:
        data["error"] = job.error.model_dump()
    return {
        "type": event_type,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "data": data,
    }


def serialize_event(event: dict[str, Any]) -> bytes:
    """Compact and key-sorted, so the stored body (and so its signature) is reproducible."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def next_attempt_delay(schedule_s: list[float], attempt: int) -> float | None:
    """Seconds to wait before the next attempt, given `attempt` attempts already made.

    `schedule_s[n]` is the delay before attempt n (the first is normally 0: send at once).
    Returns None when the schedule is exhausted: give up.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if attempt >= len(schedule_s):
        return None
    base = max(0.0, float(schedule_s[attempt]))
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def _ip_url(target: ResolvedTarget) -> str:
    ip = f"[{target.ip}]" if ":" in target.ip else target.ip
    return f"{target.scheme}://{ip}:{target.port}{target.path_with_query}"


def _host_header(target: ResolvedTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default_port = 443 if target.scheme == "https" else 80
    return host if target.port == default_port else f"{host}:{target.port}"


def _describe(exc: Exception) -> str:
    # httpx timeouts often carry an empty message; the class name says what happened.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _attempt(
    url: str,
    webhook_id: str,
    body: bytes,
    secret: str | Sequence[str],
    timeout_s: float,
    allow_hosts: list[str],
) -> tuple[int | None, str | None]:
    """Check the URL again, then POST once to the checked IP: (status code, error)."""
    try:
        # DNS may answer differently than at submission (or be slow): re-check, off the loop.
        target = await asyncio.to_thread(check_callback_url, url, allow_hosts)
    except ClientError as exc:
        return None, exc.message
    timestamp = int(time.time())
    headers = {
        # The URL names the IP; the receiver must still see its own name.
        "host": _host_header(target),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures(secret, webhook_id, timestamp, body),
    }
    # For https, httpcore uses `sni_hostname` both for SNI and for checking the certificate, so
    # TLS verifies the receiver's name while the socket goes to the address we checked.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    # trust_env=False on the client: no proxy from HTTP(S)_PROXY (it would do its own DNS) and no
    # .netrc credentials sent to a stranger. The explicit transport keeps honouring
    # SSL_CERT_FILE / SSL_CERT_DIR, so operators can trust a private CA.
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(),
        trust_env=False,
        follow_redirects=False,
        timeout=timeout_s,
    ) as client:
        try:
            # Streamed and never read: only the status matters, and a receiver must not be able
            # to make us buffer a large answer.
            async with client.stream(
                "POST", _ip_url(target), content=body, headers=headers, extensions=extensions
            ) as response:
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return None, _describe(exc)
    if 200 <= status < 300:
        return status, None
    if 300 <= status < 400:
        return status, f"receiver answered {status} (redirects are not followed)"
    return status, f"receiver answered {status}"


async def deliver(
    url: str,
    webhook_id: str,
    body: bytes,
    secret: str | Sequence[str],
    timeout_s: float,
    allow_hosts: list[str],
) -> DeliveryResult:
    """POST one signed event to `url`; never raises for anything the receiver or network does.

    `timeout_s` bounds the whole attempt (DNS, connect, send, answer): httpx's own timeouts
    apply per read, so a receiver trickling bytes could otherwise hold the attempt open.
    """
    start = time.monotonic()
    try:
        status, error = await asyncio.wait_for(
            _attempt(url, webhook_id, body, secret, timeout_s, allow_hosts), timeout_s
        )
    except asyncio.TimeoutError:
        status, error = None, f"no answer within {timeout_s:g} s"
    return DeliveryResult(
        ok=error is None, status_code=status, error=error, duration_s=time.monotonic() - start
    )
