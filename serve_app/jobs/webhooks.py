"""Webhook events, signed per Standard Webhooks 1.0, and their delivery.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`, the key
being the base64 part of a `whsec_` secret. `webhook-id` is the event's id and stays the same on
every retry so receivers can de-duplicate; `webhook-timestamp` is each attempt's Unix seconds.
Events stay small (type, timestamp, job id/status/counts): receivers fetch results themselves.
Delivery connects to exactly the address the SSRF guard checked, never follows redirects, and
counts only 2xx as success. The retry schedule lives in the job store's outbox, not here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

from serve_app.errors import ClientError
from serve_app.jobs.ssrf import check_callback_url

SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None
    error: str | None
    duration_s: float


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(encoded)


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def build_event(event_type: str, job: dict[str, Any]) -> dict[str, Any]:
    """A small event: what happened and to which job; the receiver fetches the results."""
    data: dict[str, Any] = {"id": job.get("id"), "status": job.get("state", job.get("status"))}
    for key in ("total_texts", "done_texts", "progress", "metadata", "error"):
        if job.get(key) is not None:
            data[key] = job[key]
    return {
        "type": event_type,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data,
    }


def serialize_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def next_attempt_delay(schedule_s: list[float], attempt: int) -> float | None:
    """Delay before attempt number `attempt` (0-based), with ±10% jitter; None = give up."""
    if attempt < 0 or attempt >= len(schedule_s):
        return None
    base = max(0.0, float(schedule_s[attempt]))
    return max(0.0, base * random.uniform(0.9, 1.1))


def _url_for_ip(scheme: str, ip: str, port: int, path: str) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{scheme}://{host}:{port}{path}"


async def deliver(
    url: str,
    webhook_id: str,
    body: bytes,
    secret: str,
    timeout_s: float,
    allow_hosts: list[str],
) -> DeliveryResult:
    """POST one signed event; the URL is re-checked now (DNS may have changed since submit)."""
    start = time.monotonic()
    try:
        target = check_callback_url(url, allow_hosts)
    except ClientError as exc:
        return DeliveryResult(False, None, exc.message, time.monotonic() - start)
    timestamp = int(time.time())
    default_port = 443 if target.scheme == "https" else 80
    headers = {
        "host": target.host if target.port == default_port else f"{target.host}:{target.port}",
        "content-type": "application/json",
        "user-agent": "zsc-webhooks/1",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }
    # Connect to the checked IP; for https, SNI and certificate checks still use the hostname.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            response = await client.post(
                _url_for_ip(target.scheme, target.ip, target.port, target.path_with_query),
                content=body,
                headers=headers,
                extensions=extensions,
            )
    except httpx.HTTPError as exc:
        return DeliveryResult(False, None, f"{type(exc).__name__}: {exc}", time.monotonic() - start)
    ok = 200 <= response.status_code < 300
    error = None if ok else f"receiver answered {response.status_code}"
    return DeliveryResult(ok, response.status_code, error, time.monotonic() - start)
