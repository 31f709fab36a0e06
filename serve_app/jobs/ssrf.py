"""SSRF guard for callback URLs: only public addresses, checked once and then used as checked.

A callback URL is the one place where a client makes this server send a request, so it could
aim it at the cloud metadata service, localhost admin ports or the private network. We resolve
the host ourselves, refuse the URL unless every address it resolves to is public (an IPv6 form
that wraps an IPv4 address is judged by that IPv4 address), and hand back the exact address we
checked so the sender connects to it and nothing else: a second DNS lookup could answer
differently (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from serve_app.core.errors import ClientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Python's `is_private` / `is_global` changed between patch releases (CVE-2024-4032) and, on
# some versions, call 100.64/10, multicast or `::7f00:1` global. The verdict therefore rests on
# these explicit lists, taken from the IANA special-purpose registries; `is_global` is only a
# second opinion that can refuse more, never less.
_NOT_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", includes the unspecified address
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, includes the 169.254.169.254 metadata service
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes the broadcast address
    )
)
# Only 2000::/3 is allocated as global unicast: that one rule refuses ::, ::1, IPv4-compatible
# ::a.b.c.d, ULA fc00::/7, link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments (Teredo inside it is unwrapped before this)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing SIDs
    )
)
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class ResolvedTarget:
    """Where a callback goes: connect to `ip`, but speak to `host` (Host header, TLS SNI)."""

    scheme: str
    host: str  # ASCII (IDNA) form, without brackets for IPv6 literals
    port: int
    ip: str
    path_with_query: str


def _refuse(url: str, why: str) -> ClientError:
    return ClientError(
        f"callback_url {url!r} is refused: {why}. Use a public http(s) URL "
        "(or allow-list the host in jobs.webhook.allow_hosts for local receivers).",
        422,
        "invalid_callback_url",
    )


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and would reach (mapped, NAT64, 6to4, Teredo).

    Teredo carries two (its server and the client behind it); both must be public.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    if ip in _IPV4_MAPPED or ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def is_public(ip: IPAddress) -> bool:
    """True when `ip` is a globally routable unicast address a callback may be sent to."""
    wrapped = embedded_ipv4(ip)
    if wrapped:
        return all(is_public(inner) for inner in wrapped)
    if isinstance(ip, ipaddress.IPv4Address):
        listed = any(ip in net for net in _NOT_PUBLIC_V4)
    else:
        listed = ip not in _GLOBAL_UNICAST_V6 or any(ip in net for net in _NOT_PUBLIC_V6)
    return not listed and ip.is_global


def _parse_allow_list(allow_hosts: list[str]) -> tuple[set[str], list[IPNetwork]]:
    """Split allow-list entries into host names and networks (a bare IP is a /32 or /128)."""
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in allow_hosts:
        entry = entry.strip().strip("[]").lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


def refused_addresses(host: str, ips: list[IPAddress], allow_hosts: list[str]) -> list[IPAddress]:
    """The addresses of `host` a callback must not reach: neither public nor allow-listed.

    An allow-listed host name exempts everything it resolves to; an allow-listed IP or CIDR
    exempts only the addresses inside it, so a name that resolves to one allowed and one private
    address is still refused.
    """
    names, networks = _parse_allow_list(allow_hosts)
    if host.rstrip(".") in names:
        return []
    return [
        ip
        for ip in ips
        if not is_public(ip)
        and not any(ip.version == net.version and ip in net for net in networks)
    ]


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order of preference."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    # Non-canonical IPv4 spellings ("127.1", "2130706433", "0x7f.1") land here too; getaddrinfo
    # turns them into the address a connection would really reach, which is what gets checked.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # A zone id ("fe80::1%eth0") is not part of the address; link-local is refused either way.
    return list(
        dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    )


def check_callback_url(url: str, allow_hosts: list[str]) -> ResolvedTarget:
    """Validate and resolve a callback URL; raise ClientError (422) saying why it is refused.

    Blocking (DNS): call it from a thread when on an event loop.
    """
    if not isinstance(url, str) or not url.strip():
        raise _refuse(str(url), "it is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _refuse(url, f"it is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(url, "only http and https are allowed")
    # `user:pass@host` would be sent to the receiver as credentials, and it is a classic way to
    # make a URL look as if it pointed somewhere else.
    if parts.username is not None or parts.password is not None:
        raise _refuse(url, "credentials in the URL are not allowed")
    if not parts.hostname:
        raise _refuse(url, "it has no host")
    if port == 0:
        raise _refuse(url, "port 0 is not a valid port")
    port = port or (443 if scheme == "https" else 80)
    try:
        # Host header and TLS SNI must be ASCII; the `idna` codec is what getaddrinfo would use.
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise _refuse(url, f"{parts.hostname!r} is not a valid host name") from None
    try:
        ips = _resolve(host, port)
    except (OSError, UnicodeError):
        raise _refuse(url, f"the host {host!r} does not resolve") from None
    if not ips:
        raise _refuse(url, f"the host {host!r} does not resolve")
    refused = refused_addresses(host, ips, allow_hosts)
    if refused:
        listed = ", ".join(str(ip) for ip in refused)
        raise _refuse(url, f"{host!r} resolves to a non-public address ({listed})")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    ip = ips[0]
    # ::ffff:a.b.c.d is a.b.c.d; connecting to the plain IPv4 form also works where IPv6 is off.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ResolvedTarget(scheme=scheme, host=host, port=port, ip=str(ip), path_with_query=path)
