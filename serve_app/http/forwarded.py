"""Who the client is behind trusted proxies: `X-Forwarded-For` and RFC 7239 `Forwarded`.

Each proxy appends the address it received the request from, so the chain reads client, proxy1,
proxy2, ..., and the socket's peer is the last hop. Only a trusted hop's word counts: walking
from the right, trusted hops are skipped and the first untrusted address is the client. A hop
the chain cannot name (`unknown`, an obfuscated `_id`, garbage) stops the walk at the last
address that was named. Without trusted proxies the peer is the client, whatever the headers say.

Pure functions over strings (no HTTP framework), so the rules are tested directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The configured proxies, as networks (a bare address is a /32 or /128)."""

    def __init__(self, entries: Iterable[str] = ()):
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def parse_address(value: str) -> Address | None:
    """An address as a hop writes it: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80`, `2001:db8::1`
    (with or without RFC 7239 quotes); None for `unknown`, `_obfuscated` or anything else."""
    value = value.strip().strip('"').strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several colons
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def forwarded_for(values: Sequence[str]) -> list[str]:
    """The `for=` of each element of RFC 7239 `Forwarded` headers, in order ('' when absent)."""
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            found = ""
            for pair in element.split(";"):
                name, sep, raw = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    found = raw.strip()
            hops.append(found)
    return hops


def x_forwarded_for(values: Sequence[str]) -> list[str]:
    """The hops of `X-Forwarded-For` headers, in order (repeated headers join as one list)."""
    return [hop.strip() for value in values for hop in value.split(",")]


def client_address(peer: Address, hops: Sequence[str], trusted: TrustedProxies) -> Address:
    """The client: the first untrusted address walking from the peer leftwards along `hops`."""
    current = peer
    for hop in reversed(hops):
        if not trusted.trusts(current):
            return current
        named = parse_address(hop)
        if named is None:
            return current
        current = named
    return current
