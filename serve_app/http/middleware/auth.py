"""Optional API keys: `Authorization: Bearer KEY` on everything under /v1 and on the Hugging Face
routes (`POST /`, `POST /predict`).

Keys are held only as SHA-256 digests: `auth.api_key_hashes` is configured as hashes, and the
plain keys of `ZSC_API_KEYS="name:key,name2:key2"` are hashed when the ingress replica starts
and dropped. A request is checked by hashing the key it presents and comparing that digest
with every configured one in constant time, so neither a timing difference nor a log line nor
an error message can reveal a key.

The check is a pure ASGI middleware placed outside every other one, so a caller without a key
cannot make the server read or parse a body (the 401 comes before the 413 and the JSON checks).
A valid key's *name* goes to `request.state.api_key_name`: the rate limiter keys buckets by it
and jobs record it as their owner. The health check, the web page (`GET /`) and the API docs
stay open. Headers are never logged, so neither a key nor the Hugging Face token that
`huggingface_hub` sends on its own can reach the logs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.config import AuthConfig
from serve_app.core.errors import error_body
from serve_app.core.keys import HASH_PREFIX, hash_key

__all__ = ["ApiKeys", "AuthConfigError", "hash_key", "install_auth"]

log = logging.getLogger("ray.serve")

PROTECTED_PREFIX = "/v1"
# The Hugging Face task routes score text too: POST only (GET / is the page).
PROTECTED_POSTS = frozenset({"/", "/predict"})
SCHEME_NAME = "bearerAuth"


class AuthConfigError(ValueError):
    """The key configuration is unusable. Its message never contains a key."""


def _parse_env_keys(value: str, variable: str) -> dict[str, str]:
    """'name:key,name2:key2' -> {name: hash}. Errors name the entry's position, not its text."""
    hashes: dict[str, str] = {}
    for position, entry in enumerate(value.split(","), start=1):
        if not entry.strip():
            continue
        name, sep, key = entry.strip().partition(":")
        if not sep or not name.strip() or not key:
            raise AuthConfigError(
                f"{variable}: entry {position} is not 'name:key' (entries are comma-separated)"
            )
        if name.strip() in hashes:
            raise AuthConfigError(f"{variable}: key name {name.strip()!r} appears twice")
        hashes[name.strip()] = hash_key(key)
    return hashes


def _digest_bytes(hashed: str) -> bytes:
    # AuthConfig has validated the form ('sha256:' + 64 hex digits); hash_key makes the same.
    return bytes.fromhex(hashed[len(HASH_PREFIX) :])


class ApiKeys:
    """The configured keys, as digests, and the lookup of a presented key's name."""

    def __init__(self, digests: Mapping[str, bytes]):
        self._digests = dict(digests)

    @classmethod
    def from_config(cls, config: AuthConfig, environ: Mapping[str, str]) -> ApiKeys:
        """Configured hashes plus the keys in `environ[config.api_keys_env]`, hashed now."""
        hashes = dict(config.api_key_hashes)
        from_env = _parse_env_keys(environ.get(config.api_keys_env, ""), config.api_keys_env)
        for name, hashed in from_env.items():
            if name in hashes:
                raise AuthConfigError(
                    f"key name {name!r} is both in auth.api_key_hashes and in {config.api_keys_env}"
                )
            hashes[name] = hashed
        return cls({name: _digest_bytes(hashed) for name, hashed in hashes.items()})

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def name_of(self, key: bytes) -> str | None:
        """The name of the key, or None. Compares with every digest so timing reveals nothing."""
        presented = hashlib.sha256(key).digest()
        found: str | None = None
        for name, digest in self._digests.items():
            if hmac.compare_digest(presented, digest):
                found = name
        return found


OPEN_NOTICE = "none (open to anyone who can reach the port)"


def is_loopback(host: str | None) -> bool:
    """Whether a bind address is reachable from this machine only. None: Serve runs no HTTP
    proxy at all. '0.0.0.0', '::' and '' bind every interface."""
    if host is None:
        return True
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to elsewhere, assume reachable


def exposure_problem(config: AuthConfig, keys: ApiKeys, host: str | None) -> str | None:
    """Why the app must not start with these keys on this bind, in one line; None if it may."""
    where = f"keys in {config.api_keys_env}=name:key,... or auth.api_key_hashes"
    if config.mode == "keys" and not keys.enabled:
        return f"zsc: auth.mode is keys but no API key is configured: set {where}"
    if config.mode is None and not keys.enabled and not is_loopback(host):
        return (
            f"zsc: Serve's HTTP proxy binds {host!r}, reachable from other machines, and no API "
            f"key is configured: set {where}, or set auth.mode: none to serve anyone who can "
            "reach the port"
        )
    return None


def open_or_keys(config: AuthConfig, environ: Mapping[str, str]) -> ApiKeys:
    """The keys the ingress checks: none at all with `auth.mode: none` (said loudly, since
    anyone who can reach the port is then served), else the configured ones."""
    if config.mode == "none":
        log.warning(
            "zsc: auth.mode is none: every route is open to anyone who can reach the port "
            "(no API keys, anonymous callers share one jobs namespace)"
        )
        return ApiKeys({})
    return ApiKeys.from_config(config, environ)


def auth_summary(config: AuthConfig, keys: ApiKeys) -> str:
    """What `GET /v1/model` says about access."""
    if config.mode == "none":
        return OPEN_NOTICE
    return "keys" if keys.enabled else "none (loopback only)"


def bearer_token(scope: Scope) -> bytes | None:
    """The key as sent (raw bytes: a UTF-8 key hashes the same as in `hash_key`)."""
    value = Headers(scope=scope).get("authorization")
    if value is None:
        return None
    # Starlette decodes header values as latin-1: encoding back gives the bytes that were sent.
    scheme, _, token = value.encode("latin-1").partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return None


def route_path(scope: Scope) -> str:
    """The path inside this app: Serve mounts an app under its route prefix as the root path."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def is_protected(path: str, method: str = "POST") -> bool:
    if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
        return True
    return method == "POST" and path in PROTECTED_POSTS


class ApiKeyAuth:
    """Pure ASGI middleware: a valid bearer key for /v1, its name on the request's state."""

    def __init__(self, app: ASGIApp, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(route_path(scope), scope["method"]):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None:
            await _unauthorized(
                scope, receive, send, "missing API key: send 'Authorization: Bearer <key>'", None
            )
            return
        name = self.keys.name_of(token)
        if name is None:
            await _unauthorized(scope, receive, send, "invalid API key", "invalid_token")
            return
        # A new scope and state dict: the server may share the incoming state between requests.
        state = {**scope.get("state", {}), "api_key_name": name}
        await self.app({**scope, "state": state}, receive, send)


async def _unauthorized(
    scope: Scope, receive: Receive, send: Send, message: str, error: str | None
) -> None:
    # RFC 6750 §3: the challenge, with error="invalid_token" when a key was sent but is wrong.
    challenge = 'Bearer realm="zsc"' + (f', error="{error}"' if error else "")
    response = JSONResponse(
        error_body("unauthorized", message),
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )
    await response(scope, receive, send)


def install_auth(app: FastAPI, keys: ApiKeys) -> None:
    """Require keys on /v1 and say so in the OpenAPI document. Call after every other
    `add_middleware`, so the check runs first. Does nothing when no key is configured."""
    if not keys.enabled:
        return
    app.add_middleware(ApiKeyAuth, keys=keys)
    app.openapi = _openapi_with_bearer(app, app.openapi)  # type: ignore[method-assign]


def _openapi_with_bearer(
    app: FastAPI, build: Callable[[], dict[str, Any]]
) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        # FastAPI builds the document once and caches it on the app; amend that first build.
        first = app.openapi_schema is None
        schema = build()
        if not first:
            return schema
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SCHEME_NAME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: 'Authorization: Bearer <key>'.",
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if is_protected(path, method.upper()):
                    operation.setdefault("security", [{SCHEME_NAME: []}])
                    operation.setdefault("responses", {}).setdefault(
                        "401", {"description": "Missing or invalid API key."}
                    )
        return schema

    return openapi
