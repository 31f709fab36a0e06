"""Standard Webhooks signing and delivery, and the SSRF guard on callback URLs (no Ray)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from serve_app.errors import ClientError
from serve_app.jobs import webhooks
from serve_app.jobs.ssrf import check_callback_url, is_public


def test_signature_verifies_with_an_independent_implementation() -> None:
    secret = webhooks.new_secret()
    body = webhooks.serialize_event(webhooks.build_event("job.succeeded", {"id": "j1", "state": "succeeded"}))
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(time.time())),
    }
    headers["webhook-signature"] = webhooks.sign(secret, "msg_1", int(headers["webhook-timestamp"]), body)
    verified = Webhook(secret).verify(body, headers)
    assert verified["data"] == {"id": "j1", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"succeeded", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)})


def test_next_attempt_delay_follows_the_schedule_with_jitter() -> None:
    schedule = [0, 5, 300]
    assert webhooks.next_attempt_delay(schedule, 0) == 0
    for _ in range(50):
        assert 4.5 <= webhooks.next_attempt_delay(schedule, 1) <= 5.5
        assert 270 <= webhooks.next_attempt_delay(schedule, 2) <= 330
    assert webhooks.next_attempt_delay(schedule, 3) is None


class _Receiver(BaseHTTPRequestHandler):
    status = 200
    seen: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(type(self).status)
        if 300 <= type(self).status < 400:
            self.send_header("location", "http://127.0.0.1:1/elsewhere")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"seen": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/hook?x=1", handler
    server.shutdown()


def test_deliver_posts_a_signed_event_to_the_checked_address(receiver) -> None:
    url, handler = receiver
    secret = webhooks.new_secret()
    body = b'{"type":"job.succeeded"}'
    result = asyncio.run(webhooks.deliver(url, "msg_7", body, secret, 5, ["localhost", "127.0.0.1"]))
    assert result.ok and result.status_code == 200
    headers, received = handler.seen[0]
    assert received == body
    assert headers["webhook-id"] == "msg_7"
    assert headers["host"].startswith("localhost:")
    Webhook(secret).verify(received, headers)


@pytest.mark.parametrize("status", [302, 500, 404])
def test_non_2xx_and_redirects_are_failures(receiver, status: int) -> None:
    url, handler = receiver
    handler.status = status
    result = asyncio.run(webhooks.deliver(url, "m", b"{}", webhooks.new_secret(), 5, ["localhost"]))
    assert not result.ok and result.status_code == status
    assert len(handler.seen) == 1  # the redirect was not followed


def test_a_receiver_that_is_down_is_a_failure_not_an_exception() -> None:
    result = asyncio.run(webhooks.deliver("http://127.0.0.1:9/", "m", b"{}", webhooks.new_secret(), 2, ["127.0.0.1"]))
    assert not result.ok and result.status_code is None and result.error


def test_deliver_refuses_a_url_that_is_not_allowed_any_more(receiver) -> None:
    url, handler = receiver
    result = asyncio.run(webhooks.deliver(url, "m", b"{}", webhooks.new_secret(), 5, []))
    assert not result.ok and "non-public" in result.error and handler.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://localhost/hook",
        "http://user:pw@example.com/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "http:///nohost",
        "not a url",
    ],
)
def test_non_public_or_malformed_callback_urls_are_refused(url: str) -> None:
    with pytest.raises(ClientError) as info:
        check_callback_url(url, [])
    assert info.value.status_code == 422 and info.value.type == "invalid_callback_url"


def test_public_addresses_pass_and_allow_lists_open_local_receivers() -> None:
    target = check_callback_url("https://93.184.216.34:8443/cb?a=1", [])
    assert (target.ip, target.port, target.path_with_query) == ("93.184.216.34", 8443, "/cb?a=1")
    assert check_callback_url("http://127.0.0.1:9000/", ["127.0.0.0/8"]).ip == "127.0.0.1"
    assert check_callback_url("http://localhost:9000/", ["localhost"]).host == "localhost"
    assert is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("::"))


def test_events_stay_small() -> None:
    event = webhooks.build_event(
        "job.succeeded", {"id": "j", "state": "succeeded", "results": [1] * 1000, "done_texts": 5}
    )
    assert event["data"] == {"id": "j", "status": "succeeded", "done_texts": 5}
    assert json.loads(webhooks.serialize_event(event)) == event
