"""Who is calling: written once for every route (classify, jobs, Hugging Face)."""

from __future__ import annotations

from fastapi import Request

from serve_app.core.ratelimit import ANONYMOUS_KEY


def owner_of(request: Request) -> str | None:
    """The API key's name when auth identified one (jobs belong to it), else None."""
    name = getattr(request.state, "api_key_name", None)
    return name if isinstance(name, str) and name else None


def client_key(request: Request) -> str:
    """Whose rate-limit bucket pays: the API key's name, else the client's address."""
    owner = owner_of(request)
    if owner is not None:
        return owner
    return request.client.host if request.client else ANONYMOUS_KEY
