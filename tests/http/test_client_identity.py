"""Who is calling, behind a load balancer: the rate limit's bucket is the client's own only
through trusted proxies (in-process edge; the forwarded-header rules themselves as pure code)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from edge import asgi_client, engine_app, local_limiter

from serve_app.config import AppConfig, RateLimitConfig
from serve_app.core.ratelimit import ANONYMOUS_KEY, metric_label
from serve_app.http.forwarded import (
    TrustedProxies,
    client_address,
    forwarded_for,
    parse_address,
    x_forwarded_for,
)

BODY = {"text": "The striker scored twice.", "labels": ["sports", "cooking"]}
BALANCER = "10.0.0.1"
TRUSTED = ["10.0.0.0/24", "2001:db8::/32"]


def keys_seen(model_dir: Path, peer: str, headers: dict[str, str], **config: object) -> list[str]:
    app, services = engine_app(model_dir, **config)
    seen: list[str] = []
    services.rate_limiter = local_limiter(RateLimitConfig(enabled=True), seen)

    async def send() -> None:
        async with asgi_client(app, peer) as client:
            answer = await client.post("/v1/classify", json=BODY, headers=headers)
            assert answer.status_code == 200, answer.text

    asyncio.run(send())
    return seen


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "client"),
    [
        # No trusted proxies: the socket's peer, whatever the headers claim.
        (BALANCER, {"X-Forwarded-For": "203.0.113.7"}, [], BALANCER),
        # A trusted balancer names the client.
        (BALANCER, {"X-Forwarded-For": "203.0.113.7"}, TRUSTED, "203.0.113.7"),
        # A client's own forged entry stays left of the address the balancer saw.
        (BALANCER, {"X-Forwarded-For": "1.1.1.1, 203.0.113.7"}, TRUSTED, "203.0.113.7"),
        # Two trusted hops are skipped.
        (BALANCER, {"X-Forwarded-For": "203.0.113.7, 10.0.0.9"}, TRUSTED, "203.0.113.7"),
        # An untrusted peer's headers are ignored.
        ("198.51.100.2", {"X-Forwarded-For": "203.0.113.7"}, TRUSTED, "198.51.100.2"),
        # RFC 7239, IPv6 with a port, quoted; it wins over X-Forwarded-For.
        (
            BALANCER,
            {"Forwarded": 'for="[2001:db9::17]:4711";proto=https', "X-Forwarded-For": "1.1.1.1"},
            TRUSTED,
            "2001:db9::17",
        ),
        # An unnamed hop stops the walk at the last named one.
        (BALANCER, {"Forwarded": "for=unknown"}, TRUSTED, BALANCER),
    ],
)
def test_the_bucket_is_the_client_through_trusted_proxies_only(
    tiny_model_dir: Path, peer: str, headers: dict[str, str], trusted: list[str], client: str
) -> None:
    assert keys_seen(tiny_model_dir, peer, headers, trusted_proxies=trusted) == [client]


def test_uvicorns_own_rewrite_is_undone(tiny_model_dir: Path) -> None:
    # Serve's uvicorn trusts X-Forwarded-For from 127.0.0.1 and rewrites the peer to
    # (header address, 0). zsc decides for itself: without trusted proxies, the peer was local.
    headers = {"X-Forwarded-For": "203.0.113.7"}
    app, services = engine_app(tiny_model_dir)
    seen: list[str] = []
    services.rate_limiter = local_limiter(RateLimitConfig(enabled=True), seen)

    async def send() -> None:
        transport_app = asgi_client(app, "203.0.113.7", port=0)
        async with transport_app as client:
            assert (await client.post("/v1/classify", json=BODY, headers=headers)).is_success

    asyncio.run(send())
    assert seen == ["127.0.0.1"]
    trusting = keys_seen(tiny_model_dir, "203.0.113.7", headers, trusted_proxies=["127.0.0.1"])
    assert trusting == ["203.0.113.7"]


def test_one_forwarded_client_is_limited_alone(tiny_model_dir: Path) -> None:
    """Behind one balancer, a client over its limit is refused; another client is not."""
    app, services = engine_app(tiny_model_dir, trusted_proxies=TRUSTED)
    slow = {"203.0.113.7": {"rate": 0.001, "burst": 2}}
    services.rate_limiter = local_limiter(RateLimitConfig(enabled=True, overrides=slow))

    async def send() -> list[tuple[str, int]]:
        answers = []
        async with asgi_client(app, BALANCER) as client:
            for forwarded in ["203.0.113.7", "203.0.113.7", "198.51.100.4"]:
                answer = await client.post(
                    "/v1/classify", json=BODY, headers={"X-Forwarded-For": forwarded}
                )
                answers.append((forwarded, answer.status_code))
        return answers

    assert asyncio.run(send()) == [
        ("203.0.113.7", 200),
        ("203.0.113.7", 429),
        ("198.51.100.4", 200),
    ]


def test_header_parsing() -> None:
    assert x_forwarded_for(["1.1.1.1, 2.2.2.2", "3.3.3.3"]) == ["1.1.1.1", "2.2.2.2", "3.3.3.3"]
    assert forwarded_for(['for=1.1.1.1;by=x, For="[::1]:80"', "proto=http"]) == [
        "1.1.1.1",
        '"[::1]:80"',
        "",
    ]
    assert parse_address("1.2.3.4:80") == ipaddress.ip_address("1.2.3.4")
    assert parse_address('"[2001:db8::1]:443"') == ipaddress.ip_address("2001:db8::1")
    assert parse_address("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    for bad in ("unknown", "_hidden", "", "not an address", "[::1"):
        assert parse_address(bad) is None
    trusted = TrustedProxies(TRUSTED)
    peer = ipaddress.ip_address(BALANCER)
    # Every hop trusted: the leftmost is the client.
    assert client_address(peer, ["10.0.0.3", "10.0.0.2"], trusted) == ipaddress.ip_address(
        "10.0.0.3"
    )


def test_trusted_proxies_are_validated_at_config_time() -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR network"):
        AppConfig(trusted_proxies=["10.0.0.0/33"])
    assert AppConfig(trusted_proxies=[" 10.1.2.3 "]).trusted_proxies == ["10.1.2.3"]


def test_metrics_label_addresses_as_anonymous() -> None:
    assert metric_label("203.0.113.7") == ANONYMOUS_KEY
    assert metric_label("2001:db8::1") == ANONYMOUS_KEY
    assert metric_label("erin") == "erin"
