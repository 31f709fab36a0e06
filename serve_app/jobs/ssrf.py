"""SSRF guard for callback URLs: only public addresses, checked once and then used as checked.

A callback URL is the one place where a client makes this server send a request, so it could
aim it at the cloud metadata service, localhost admin ports or the private network. We resolve
the host ourselves, refuse every non-public address (including IPv6 forms that wrap an IPv4
address), and hand back the exact address we checked so the sender connects to it and nothing
else (no second DNS lookup that could answer differently).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from serve_app.errors import ClientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges Python's is_global does not flag (or flags inconsistently across versions).
_EXTRA_BLOCKED = [
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
    ipaddress.ip_network("fc00::/7"),  # unique local
    ipaddress.ip_network("fe80::/10"),  # link-local
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class ResolvedTarget:
    scheme: str
    host: str
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


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    inner = embedded_ipv4(ip)
    if inner is not None and not is_public(inner):
        return False
    if (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
    ):
        return False
    if any(ip in net for net in _EXTRA_BLOCKED if net.version == ip.version):
        return False
    return inner is not None or ip.is_global


def _allowed(host: str, ips: list[IPAddress], allow_hosts: list[str]) -> bool:
    for entry in allow_hosts:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == host.lower():
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if ips and all(ip in network for ip in ips if ip.version == network.version) and any(
            ip.version == network.version for ip in ips
        ):
            return True
    return False


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    # Drop IPv6 zone ids ("fe80::1%eth0") before parsing.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def check_callback_url(url: str, allow_hosts: list[str]) -> ResolvedTarget:
    """Validate and resolve a callback URL; raise ClientError (422) saying why it is refused."""
    if not isinstance(url, str) or not url:
        raise _refuse(str(url), "it is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _refuse(url, f"it is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(url, "only http and https are allowed")
    if parts.username is not None or parts.password is not None:
        raise _refuse(url, "credentials in the URL are not allowed")
    host = parts.hostname
    if not host:
        raise _refuse(url, "it has no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        ips = _resolve(host, port)
    except (OSError, UnicodeError):
        raise _refuse(url, f"the host {host!r} does not resolve") from None
    if not ips:
        raise _refuse(url, f"the host {host!r} does not resolve")
    if not _allowed(host, ips, allow_hosts):
        blocked = [str(ip) for ip in ips if not is_public(ip)]
        if blocked:
            raise _refuse(url, f"{host!r} resolves to a non-public address ({', '.join(blocked)})")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return ResolvedTarget(scheme=scheme, host=host, port=port, ip=str(ips[0]), path_with_query=path)
