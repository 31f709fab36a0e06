"""Standard Webhooks signing and delivery, and the SSRF guard on callback URLs (no Ray).

Every delivery goes to a real receiver on this machine's loopback (allow-listed); public
addresses are only ever checked, never contacted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from serve_app.core.errors import ClientError
from serve_app.devtools.ports import free_port
from serve_app.jobs import webhooks
from serve_app.jobs.models import JobError, JobWithResults
from serve_app.jobs.ssrf import check_callback_url, is_public, refused_addresses

LOCAL = ["localhost", "127.0.0.1"]
PROGRESS = {"total_texts": 5, "completed_texts": 5, "total_chunks": 1, "completed_chunks": 1}
JOB = JobWithResults(
    id="job_1",
    state="succeeded",
    created_at=1.0,
    started_at=2.0,
    finished_at=3.0,
    cancelled_at=None,
    labels=["a"],
    hypothesis_template="This example is {}.",
    multi_label=False,
    progress=PROGRESS,
    error=None,
    metadata={"order": "A-17"},
    callback_url="https://receiver.example/hook",
    deliveries=[],
    results=[{"sequence": "x", "labels": ["a"], "scores": [1.0]}] * 1000,
)


# ---- signing -----------------------------------------------------------------------------------


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(secret, webhook_id, timestamp, body),
    }


def test_signature_equals_and_verifies_with_the_independent_implementation() -> None:
    secret = webhooks.new_secret()
    body = webhooks.serialize_event(webhooks.build_event("job.succeeded", JOB))
    at = 1_700_000_000
    sent_at = dt.datetime.fromtimestamp(at, dt.timezone.utc)
    reference = Webhook(secret).sign("msg_1", sent_at, body.decode())
    assert webhooks.sign(secret, "msg_1", at, body) == reference

    now = int(time.time())
    headers = signed_headers(secret, "msg_1", now, body)
    assert Webhook(secret).verify(body, headers)["data"]["id"] == "job_1"


@pytest.mark.parametrize(
    "tamper",
    ["body", "timestamp", "id", "secret"],
)
def test_a_tampered_event_fails_verification(tamper: str) -> None:
    secret = webhooks.new_secret()
    body = webhooks.serialize_event(webhooks.build_event("job.succeeded", JOB))
    now = int(time.time())
    headers = signed_headers(secret, "msg_1", now, body)
    verifier = Webhook(secret)
    if tamper == "body":
        body = body.replace(b"succeeded", b"failed")
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    elif tamper == "id":
        headers["webhook-id"] = "msg_2"
    else:
        verifier = Webhook(webhooks.new_secret())
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, headers)


def test_secrets_are_fresh_whsec_keys_and_malformed_ones_fail_loudly() -> None:
    first, second = webhooks.new_secret(), webhooks.new_secret()
    assert first != second and first.startswith("whsec_")
    assert 24 <= len(base64.b64decode(first.removeprefix("whsec_"))) <= 64
    with pytest.raises(ValueError, match="whsec_"):
        webhooks.sign("whsec_not base64!", "msg", 1, b"{}")


def test_events_are_small_and_serialize_stably() -> None:
    event = webhooks.build_event("job.succeeded", JOB)
    assert event["type"] == "job.succeeded"
    assert dt.datetime.fromisoformat(event["timestamp"]).tzinfo is not None
    # Id, status and counts only: results, metadata and the URL stay on the job.
    assert event["data"] == {"id": "job_1", "status": "succeeded", "progress": PROGRESS}
    error = {"type": "classifier_error", "message": "boom"}
    failed = webhooks.build_event(
        "job.failed", JOB.model_copy(update={"state": "failed", "error": JobError(**error)})
    )
    assert failed["data"]["error"] == error

    body = webhooks.serialize_event(event)
    assert json.loads(body) == event
    assert b" " not in body.replace(b"job.succeeded", b"")  # compact
    reordered = {key: event[key] for key in reversed(event)}
    reordered["data"] = {key: event["data"][key] for key in reversed(event["data"])}
    assert webhooks.serialize_event(reordered) == body


def test_next_attempt_delay_follows_the_schedule_with_bounded_jitter() -> None:
    schedule = [0, 5, 300, -1]
    delays = [webhooks.next_attempt_delay(schedule, 1) for _ in range(500)]
    assert all(4.5 <= delay <= 5.5 for delay in delays)
    assert len({round(delay, 6) for delay in delays}) > 1  # there is jitter
    assert all(270 <= webhooks.next_attempt_delay(schedule, 2) <= 330 for _ in range(200))
    assert webhooks.next_attempt_delay(schedule, 0) == 0  # "immediately" stays immediate
    assert webhooks.next_attempt_delay(schedule, 3) == 0  # never negative
    assert webhooks.next_attempt_delay(schedule, 4) is None  # exhausted: give up
    assert webhooks.next_attempt_delay([], 0) is None
    with pytest.raises(ValueError):
        webhooks.next_attempt_delay(schedule, -1)


# ---- delivery to a real local receiver ----------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP(S) server that records what it receives and answers as told."""

    port: int
    status: int = 200
    delay_s: float = 0.0  # before answering; cut short when the fixture ends (`release`)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # paths, once their answer was sent
    sni: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/hook?job=1", scheme: str = "http") -> str:
        return f"{scheme}://localhost:{self.port}{path}"


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    # Bind where the guard will send "localhost" (IPv4 or IPv6, as this machine resolves it).
    address = check_callback_url("http://localhost/", ["localhost"]).ip
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    receiver = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.requests.append((self.path, headers, body))
            receiver.release.wait(receiver.delay_s)
            self.send_response(receiver.status)
            if 300 <= receiver.status < 400:
                self.send_header("location", "/elsewhere")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            receiver.answered.append(self.path)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        address_family = family

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # refused TLS handshakes are part of the tests

    server = Server((address, 0), Handler)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.sni.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()  # a handler still delaying its answer ends now
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


def deliver(
    url: str, body: bytes, secret: str, timeout_s: float = 5, allow_hosts: list[str] = LOCAL
) -> webhooks.DeliveryResult:
    return asyncio.run(webhooks.deliver(url, "msg_7", body, secret, timeout_s, allow_hosts))


def test_deliver_posts_a_signed_event(receiver: Receiver) -> None:
    secret = webhooks.new_secret()
    body = webhooks.serialize_event(webhooks.build_event("job.succeeded", JOB))
    before = int(time.time())
    result = deliver(receiver.url(), body, secret)
    assert result.ok and result.status_code == 200 and result.error is None
    assert result.duration_s > 0
    path, headers, received = receiver.requests[0]
    assert path == "/hook?job=1" and received == body
    assert headers["webhook-id"] == "msg_7"
    assert before <= int(headers["webhook-timestamp"]) <= time.time()
    assert headers["content-type"] == "application/json"
    # The socket went to the checked IP, but the receiver still sees its own name.
    assert headers["host"] == f"localhost:{receiver.port}"
    assert Webhook(secret).verify(received, headers)["data"]["status"] == "succeeded"


def test_every_attempt_keeps_the_id_and_signs_its_own_timestamp(receiver: Receiver) -> None:
    secret = webhooks.new_secret()
    receiver.status = 503
    assert not deliver(receiver.url(), b"{}", secret).ok
    time.sleep(1.05)  # the timestamp has a resolution of one second
    receiver.status = 200
    assert deliver(receiver.url(), b"{}", secret).ok
    (_, first, _), (_, second, _) = receiver.requests
    assert first["webhook-id"] == second["webhook-id"] == "msg_7"
    assert int(second["webhook-timestamp"]) > int(first["webhook-timestamp"])
    Webhook(secret).verify(b"{}", second)


@pytest.mark.parametrize("status", [200, 202, 204])
def test_any_2xx_is_a_success(receiver: Receiver, status: int) -> None:
    receiver.status = status
    result = deliver(receiver.url(), b"{}", webhooks.new_secret())
    assert result.ok and result.status_code == status


@pytest.mark.parametrize("status", [301, 302, 307, 308, 400, 404, 410, 500, 503])
def test_redirects_and_errors_are_failures(receiver: Receiver, status: int) -> None:
    receiver.status = status
    result = deliver(receiver.url(), b"{}", webhooks.new_secret())
    assert not result.ok and result.status_code == status and str(status) in result.error
    assert [path for path, _, _ in receiver.requests] == ["/hook?job=1"]  # no redirect followed


def test_a_slow_receiver_times_out(receiver: Receiver) -> None:
    receiver.delay_s = 120  # it would answer in two minutes; the attempt may take 0.5 s
    result = deliver(receiver.url(), b"{}", webhooks.new_secret(), timeout_s=0.5)
    assert not result.ok and result.status_code is None and "within 0.5 s" in result.error
    # The attempt gave up by itself, while the receiver was still holding its answer back.
    assert len(receiver.requests) == 1 and receiver.answered == []


def test_the_timeout_bounds_the_whole_attempt_not_each_read() -> None:
    """A receiver that trickles its answer a byte at a time never trips a per-read timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    trickle_s = 30.0  # then it stops by itself: a per-read timeout alone would wait this long

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            ends = time.monotonic() + trickle_s
            while not stop.wait(0.1) and time.monotonic() < ends:
                try:
                    conn.sendall(b"a")
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        result = deliver(url, b"{}", webhooks.new_secret(), timeout_s=1)
    finally:
        stop.set()
        listener.close()
    assert not result.ok and result.status_code is None and "within 1 s" in result.error
    assert result.duration_s < trickle_s  # wide: only a timeout that never fired gets there


def test_a_receiver_that_is_down_is_a_failure_not_an_exception() -> None:
    port = free_port()  # nothing listens there
    result = deliver(f"http://127.0.0.1:{port}/", b"{}", webhooks.new_secret())
    assert not result.ok and result.status_code is None and "Connect" in result.error


def test_deliver_checks_the_url_again_and_sends_nothing_when_refused(receiver: Receiver) -> None:
    result = deliver(receiver.url(), b"{}", webhooks.new_secret(), allow_hosts=[])
    assert not result.ok and result.status_code is None and "non-public" in result.error
    assert receiver.requests == []


# ---- https: the socket goes to the checked IP, TLS still speaks to the name ---------------------


def _certificate(
    name: str,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        # A DNS name only, no IP: verification must use the host name, not the address.
        san = x509.SubjectAlternativeName([x509.DNSName(name)])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def tls_receiver(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    """An https receiver whose certificate names `request.param`, signed by a CA this process
    trusts through SSL_CERT_FILE (how operators add a private CA)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zsc test CA")])
    ca_cert = _certificate("zsc test CA", ca_name, ca_key, ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = _certificate(request.param, ca_name, leaf_key, ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    yield from _serve(context)


@pytest.mark.parametrize("tls_receiver", ["localhost"], indirect=True)
def test_https_sends_sni_and_verifies_the_host_name(tls_receiver: Receiver) -> None:
    secret = webhooks.new_secret()
    result = deliver(tls_receiver.url(scheme="https"), b"{}", secret)
    assert result.ok, result.error
    assert tls_receiver.sni == ["localhost"]
    _, headers, _ = tls_receiver.requests[0]
    assert headers["host"] == f"localhost:{tls_receiver.port}"
    Webhook(secret).verify(b"{}", headers)


@pytest.mark.parametrize("tls_receiver", ["receiver.example"], indirect=True)
def test_https_refuses_a_certificate_for_another_name(tls_receiver: Receiver) -> None:
    result = deliver(tls_receiver.url(scheme="https"), b"{}", webhooks.new_secret())
    assert not result.ok and result.status_code is None and "CERTIFICATE" in result.error.upper()
    assert tls_receiver.requests == []


# ---- the SSRF guard ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/", "non-public address (127.0.0.1)"),
        ("http://10.0.0.1/", "non-public address (10.0.0.1)"),
        ("http://169.254.169.254/latest/meta-data", "non-public address (169.254.169.254)"),
        ("http://[::1]/", "non-public address (::1)"),
        ("http://[::ffff:127.0.0.1]/", "non-public address"),
        ("ftp://example.com/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://user@93.184.216.34/", "credentials"),
        ("http:///no-host", "no host"),
        ("not a url", "only http and https"),
        ("", "empty"),
        ("http://93.184.216.34:0/", "port 0"),
        ("http://93.184.216.34:70000/", "not a valid URL"),
        # Longer than DNS allows: getaddrinfo fails without sending a query anywhere.
        ("http://" + ".".join(["a" * 60] * 5) + "/", "does not resolve"),
        ("http://" + "a" * 64 + ".example/", "not a valid host name"),
    ],
)
def test_refused_callback_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ClientError) as info:
        check_callback_url(url, [])
    error = info.value
    assert (error.status_code, error.type) == (422, "invalid_callback_url")
    assert why in error.message, error.message


def test_a_name_that_resolves_to_loopback_is_refused_naming_its_addresses() -> None:
    # Debian maps localhost to 127.0.0.1 and ::1, other systems to 127.0.0.1 only: the message
    # names every address this machine resolves it to, and each must be refused.
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}
    assert resolved and resolved <= {"127.0.0.1", "::1"}, resolved
    with pytest.raises(ClientError) as info:
        check_callback_url("http://localhost/", [])
    message = info.value.message
    listed = re.search(r"'localhost' resolves to a non-public address \(([^)]+)\)", message)
    assert listed, message
    assert set(listed.group(1).split(", ")) == resolved


@pytest.mark.parametrize(
    "url",
    [
        "http://172.16.5.4/",
        "http://172.31.255.255/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://0.0.0.0/",
        "http://224.0.0.1/",  # multicast
        "http://255.255.255.255/",
        "http://240.0.0.1/",  # reserved
        "http://192.0.2.1/",  # documentation
        "http://198.18.0.1/",  # benchmarking
        "http://[::]/",
        "http://[fd00::1]/",  # unique local
        "http://[fe80::1]/",  # link-local
        "http://[ff02::1]/",  # multicast
        "http://[2001:db8::1]/",  # documentation
        "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
        "http://[::ffff:10.0.0.1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1
        "http://[::7f00:1]/",  # IPv4-compatible 127.0.0.1
        # Non-canonical IPv4 spellings resolve to loopback: what is checked is what is reached.
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://LOCALHOST/",
    ],
)
def test_every_non_public_form_is_refused(url: str) -> None:
    with pytest.raises(ClientError, match="non-public"):
        check_callback_url(url, [])


def test_public_addresses_pass_as_resolved_targets() -> None:
    target = check_callback_url("HTTPS://93.184.216.34:8443/cb/x?a=1&b=2#frag", [])
    assert target == check_callback_url("https://93.184.216.34:8443/cb/x?a=1&b=2", [])
    assert (target.scheme, target.host, target.port, target.ip, target.path_with_query) == (
        "https",
        "93.184.216.34",
        8443,
        "93.184.216.34",
        "/cb/x?a=1&b=2",
    )
    plain = check_callback_url("http://93.184.216.34", [])
    assert (plain.port, plain.path_with_query) == (80, "/")
    assert check_callback_url("https://[2606:4700::1111]/", []).port == 443
    # Wrapped IPv4 forms are judged by the address they wrap.
    for wrapped in ("64:ff9b::5db8:d822", "2002:5db8:d822::"):
        assert check_callback_url(f"http://[{wrapped}]/", []).ip == wrapped
    # An IPv4-mapped address is that IPv4 address, and is connected to as such.
    assert check_callback_url("http://[::ffff:93.184.216.34]/", []).ip == "93.184.216.34"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("2a00:1450:4001::200e", True),
        ("100.63.255.255", True),
        ("100.128.0.0", True),
        ("100.127.255.255", False),
        ("172.15.255.255", True),
        ("172.32.0.0", True),
        ("198.51.100.7", False),
        ("203.0.113.9", False),
        ("192.88.99.1", False),
        ("fec0::1", False),
        ("3fff::1", False),
        ("2001:2::1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_every_resolved_address_must_be_public_or_allowed() -> None:
    ip = ipaddress.ip_address
    public, private, loopback6 = ip("93.184.216.34"), ip("10.0.0.1"), ip("::1")
    assert refused_addresses("cb.example", [public], []) == []
    assert refused_addresses("cb.example", [public, private], []) == [private]
    # An allowed network exempts only the addresses inside it...
    assert refused_addresses("cb.example", [private, loopback6], ["10.0.0.0/8"]) == [loopback6]
    assert refused_addresses("cb.example", [private, loopback6], ["10.0.0.0/8", "[::1]"]) == []
    # ...an allowed name exempts the host whatever it resolves to.
    assert refused_addresses("cb.example.", [private, loopback6], ["CB.example"]) == []


def test_allow_list_opens_local_receivers() -> None:
    assert check_callback_url("http://127.0.0.1:9000/", ["127.0.0.0/8"]).ip == "127.0.0.1"
    assert check_callback_url("http://127.0.0.1:9000/", ["127.0.0.1"]).ip == "127.0.0.1"
    assert check_callback_url("http://[::1]:9000/", ["::1"]).ip == "::1"
    assert check_callback_url("http://localhost:9000/", ["localhost"]).host == "localhost"
    with pytest.raises(ClientError):
        check_callback_url("http://127.0.0.1:9000/", ["10.0.0.0/8", "other.example"])


def test_international_host_names_become_ascii() -> None:
    with pytest.raises(ClientError, match="xn--bcher-kva"):
        # Too long to resolve (no DNS query leaves), so the message shows the ASCII form.
        check_callback_url("http://bücher." + ".".join(["a" * 60] * 4) + "/", [])
