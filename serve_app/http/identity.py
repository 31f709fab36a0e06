"""Who is calling: written once for every route (classify, jobs, Hugging Face).

An API key's name when auth identified one; else the client's address: the socket's peer, or,
when the peer is one of `trusted_proxies`, the client that the proxies name in `Forwarded` /
`X-Forwarded-For` (serve_app/http/forwarded.py). The decision is the app's own: Serve's proxy runs
uvicorn, which trusts X-Forwarded-For from 127.0.0.1 and rewrites the peer; that rewrite is
undone here (uvicorn leaves port 0 and an address from the header), so a local caller cannot
pick its own rate-limit bucket unless 127.0.0.1 is trusted in zsc's config too.
"""

from __future__ import annotations

from fastapi import Request

from serve_app.core.ratelimit import ANONYMOUS_KEY
from serve_app.http.forwarded import (
    TrustedProxies,
    client_address,
    forwarded_for,
    parse_address,
    x_forwarded_for,
)

# The peer uvicorn trusted when it rewrote the client from X-Forwarded-For: its default
# `forwarded_allow_ips` (FORWARDED_ALLOW_IPS) is the loopback address.
UVICORN_TRUSTED_PEER = "127.0.0.1"


def owner_of(request: Request) -> str | None:
    """The API key's name when auth identified one (jobs belong to it), else None."""
    name = getattr(request.state, "api_key_name", None)
    return name if isinstance(name, str) and name else None


def socket_peer(request: Request) -> str | None:
    """The address the request came from over the socket, before any proxy header."""
    if request.client is None:
        return None
    host, port = request.client.host, request.client.port
    if port == 0:
        hops = x_forwarded_for(request.headers.getlist("x-forwarded-for"))
        if host in hops or any(parse_address(hop) == parse_address(host) for hop in hops):
            return UVICORN_TRUSTED_PEER
    return host


def client_ip(request: Request) -> str | None:
    """The client's address, through trusted proxies only; None when there is no peer."""
    peer = socket_peer(request)
    if peer is None:
        return None
    peer_address = parse_address(peer)
    if peer_address is None:  # not an IP (a test transport's name, a unix socket)
        return peer
    trusted: TrustedProxies = request.app.state.services.proxies
    if not trusted or not trusted.trusts(peer_address):
        return str(peer_address)
    forwarded = request.headers.getlist("forwarded")
    hops = (
        forwarded_for(forwarded)
        if forwarded
        else x_forwarded_for(request.headers.getlist("x-forwarded-for"))
    )
    return str(client_address(peer_address, hops, trusted))


def client_key(request: Request) -> str:
    """Whose rate-limit bucket pays: the API key's name, else the client's address."""
    owner = owner_of(request)
    if owner is not None:
        return owner
    return client_ip(request) or ANONYMOUS_KEY
