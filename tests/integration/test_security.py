"""Security on a live app with API keys on: who may call what, what never leaks, and abusive
bodies (oversized, deeply nested, slow-loris) that must not take the service down.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import ray
from live import bearer, submit_job, wait_for

from serve_app.http.middleware.auth import SCHEME_NAME, hash_key

pytestmark = pytest.mark.ray

# Random per run, so a key found in a log can only have come from this run's requests.
ALICE = "alice-" + secrets.token_hex(12)
BOB = "bob-" + secrets.token_hex(12)
WRONG = "wrong-" + secrets.token_hex(12)
MAX_BODY = 64 * 1024
BODY_TIMEOUT_S = 2.0
CLASSIFY = {"text": "The striker scored twice.", "labels": ["sports", "cooking"]}


@pytest.fixture(scope="module")
def url(deploy_app) -> str:
    return deploy_app(
        "secure",
        auth={"api_key_hashes": {"alice": hash_key(ALICE), "bob": hash_key(BOB)}},
        limits={"max_body_bytes": MAX_BODY, "body_timeout_s": BODY_TIMEOUT_S},
        jobs={},
    )


def assert_no_key_in(response: httpx.Response) -> None:
    exposed = response.text + "".join(f"{k}: {v}" for k, v in response.headers.items())
    for key in (ALICE, BOB, WRONG):
        assert key not in exposed


# ---- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/classify", CLASSIFY),
        ("GET", "/v1/model", None),
        ("GET", "/v1/jobs", None),
        ("POST", "/v1/jobs", CLASSIFY),
        ("GET", "/v1/does-not-exist", None),
    ],
)
# Named ids: the keys are random per session, and pytest-xdist's workers must collect the same.
@pytest.mark.parametrize(
    "key",
    [None, WRONG, ALICE[:-1], f"{ALICE} extra"],
    ids=["none", "wrong", "truncated", "extra-word"],
)
def test_v1_without_a_valid_key_is_401(
    url: str, method: str, path: str, body: Any, key: str | None
) -> None:
    headers = bearer(key) if key is not None else {}
    response = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "unauthorized"
    assert_no_key_in(response)


def test_the_right_keys_are_served(url: str) -> None:
    for key in (ALICE, BOB):
        response = httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers=bearer(key), timeout=60)
        assert response.status_code == 200, response.text
        assert_no_key_in(response)
    # A client mistake with a valid key: the error names the problem, never the key.
    bad = httpx.post(
        f"{url}/v1/classify", json={"labels": ["a"]}, headers=bearer(ALICE), timeout=30
    )
    assert bad.status_code == 422
    assert_no_key_in(bad)


def test_health_page_and_docs_stay_open(url: str) -> None:
    assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{url}/", timeout=30).status_code == 200
    assert httpx.get(f"{url}/docs", timeout=30).status_code == 200
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"][SCHEME_NAME]["scheme"] == "bearer"
    assert spec["paths"]["/v1/classify"]["post"]["security"] == [{SCHEME_NAME: []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_keys_never_reach_the_logs(url: str) -> None:
    marker = "zsc-sec-" + secrets.token_hex(8)
    for key in (ALICE, WRONG):
        httpx.post(
            f"{url}/v1/classify",
            json=CLASSIFY,
            headers={**bearer(key), "X-Request-ID": f"{marker}-{key[:5]}"},
            timeout=60,
        )
    # ray's own accessor: the session directory of this test session's Ray instance.
    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())

    def logged() -> list[str]:
        texts = []
        for path in logs_dir.rglob("*"):
            if path.is_file():
                texts.append(path.read_text(errors="replace"))
        lines = [line for text in texts for line in text.splitlines()]
        # Each access line is flushed on its own: wait for both, the refused one with its 401.
        alice = any(f"{marker}-{ALICE[:5]}" in line for line in lines)
        refused = any(f"{marker}-{WRONG[:5]}" in line and "401" in line for line in lines)
        return texts if alice and refused else []

    # Both requests' log lines (Serve tags them with the request id) are written: now look.
    texts = wait_for(logged, 60, "both requests' access log lines, the refused one with 401")
    for key in (ALICE, BOB, WRONG):
        assert not any(key in text for text in texts), "an API key was written to a log"


# ---- jobs belong to the key that made them --------------------------------------------------


def test_another_key_cannot_read_list_or_cancel_a_job(url: str) -> None:
    job_id = submit_job(url, ALICE, ["one text", "another text"])

    for attempt in (
        httpx.get(f"{url}/v1/jobs/{job_id}", headers=bearer(BOB), timeout=30),
        httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=bearer(BOB), timeout=30),
    ):
        assert attempt.status_code == 404, attempt.text
        assert job_id in attempt.text or "not found" in attempt.text.lower()
    listed = httpx.get(f"{url}/v1/jobs", headers=bearer(BOB), timeout=30).json()
    assert job_id not in [job["id"] for job in listed["data"]]

    def finished() -> dict[str, Any] | None:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=bearer(ALICE), timeout=30).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(finished, 120, "alice's job to finish")
    assert job["state"] == "succeeded", job  # bob's cancel did not touch it
    assert len(job["results"]) == 2
    mine = httpx.get(f"{url}/v1/jobs", headers=bearer(ALICE), timeout=30).json()
    assert job_id in [j["id"] for j in mine["data"]]


# ---- abusive bodies ------------------------------------------------------------------------


def test_an_oversized_body_is_413_and_harmless(url: str) -> None:
    big = {"texts": ["x" * 1000] * 100, "labels": ["a"]}  # about 100 KB > 64 KB
    declared = httpx.post(f"{url}/v1/classify", json=big, headers=bearer(ALICE), timeout=30)
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "body_too_large"

    def chunks():  # no Content-Length: the guard counts while it reads
        for _ in range(100):
            yield b"x" * 1024

    streamed = httpx.post(f"{url}/v1/classify", content=chunks(), headers=bearer(ALICE), timeout=30)
    assert streamed.status_code == 413
    # Without a key the body is never read: 401 before any size check.
    anonymous = httpx.post(f"{url}/v1/classify", json=big, timeout=30)
    assert anonymous.status_code == 401
    assert (
        httpx.post(
            f"{url}/v1/classify", json=CLASSIFY, headers=bearer(ALICE), timeout=60
        ).status_code
        == 200
    )


def test_a_deeply_nested_body_is_400_and_harmless(url: str) -> None:
    deep = "[" * 50_000 + "]" * 50_000  # recursion bomb for a naive JSON parser; 100 KB
    for body in (deep[:60_000], '{"texts": ' + "[" * 1000 + "]" * 1000 + ', "labels": ["a"]}'):
        response = httpx.post(
            f"{url}/v1/classify",
            content=body,
            headers={**bearer(ALICE), "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code in (400, 413), response.text
        assert response.json()["error"]["type"] in ("invalid_json", "body_too_large")
    nested = '{"texts": ' + "[" * 40 + "]" * 40 + ', "labels": ["a"]}'
    response = httpx.post(
        f"{url}/v1/classify",
        content=nested,
        headers={**bearer(ALICE), "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and "max_json_depth" in response.text
    assert (
        httpx.post(
            f"{url}/v1/classify", json=CLASSIFY, headers=bearer(ALICE), timeout=60
        ).status_code
        == 200
    )


def raw_request_head(url: str, key: str | None, content_length: int) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {parts.path}/v1/classify HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode()


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the parsed JSON body


def read_answer(sock: socket.socket) -> Answer:
    """The whole HTTP answer waiting on `sock` (status line, headers and body), parsed."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return Answer(response.status, json.loads(response.read()))


def slow_loris(
    url: str, key: str | None, give_up_s: float, connected: threading.Event
) -> Answer | None:
    """Send the head and a byte of a 30 KB body, then one byte now and then until the server
    answers; return its answer, or None if it never did within give_up_s."""
    host, port, head = raw_request_head(url, key, 30_000)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head + b"{")
        connected.set()
        deadline = time.monotonic() + give_up_s
        while time.monotonic() < deadline:
            # The trickle's pace: a byte per quarter second at most, until there is an answer.
            readable, _, _ = select.select([sock], [], [], 0.25)
            if readable:
                return read_answer(sock)
            try:
                sock.sendall(b" ")  # JSON whitespace: the body stays valid, just slow
            except OSError:  # the server closed its side: read what it said before it did
                return read_answer(sock)
    return None


def partial_headers(url: str, release: threading.Event) -> bytes | None:
    """Send half a request head and hold the connection until `release`; then return what the
    server had sent meanwhile: None if nothing (it held the connection open), b"" if it only
    closed it, else its bytes (an answer)."""
    host, port, head = raw_request_head(url, None, 100)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head[:40])
        release.wait(120)
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return None
        received = b""
        sock.settimeout(5)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def test_slow_loris_bodies_time_out_while_others_are_served(url: str) -> None:
    n_slow, n_anonymous, n_half = 8, 2, 2
    connected = [threading.Event() for _ in range(n_slow + n_anonymous)]
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=n_slow + n_anonymous + n_half) as pool:
        slow = [pool.submit(slow_loris, url, ALICE, 60, event) for event in connected[:n_slow]]
        anonymous = [pool.submit(slow_loris, url, None, 60, event) for event in connected[n_slow:]]
        half_heads = [pool.submit(partial_headers, url, release) for _ in range(n_half)]
        try:
            for event in connected:
                assert event.wait(60), "a slow client could not even connect"
            # Every slow client has sent its head; the half heads are held open until `release`:
            # other clients are served meanwhile.
            for _ in range(5):
                response = httpx.post(
                    f"{url}/v1/classify", json=CLASSIFY, headers=bearer(ALICE), timeout=60
                )
                assert response.status_code == 200, response.text
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200

            for future in slow:
                answer = future.result(timeout=90)
                assert answer is not None, "a slow body was never answered"
                assert answer.status == 408, answer
                error = answer.body["error"]
                assert error["type"] == "body_timeout", answer
                assert f"limits.body_timeout_s={BODY_TIMEOUT_S:g}" in error["message"], answer
            for future in anonymous:
                # No key: refused from the headers alone, long before the body would time out.
                answer = future.result(timeout=90)
                assert answer is not None and answer.status == 401, answer
                assert answer.body["error"]["type"] == "unauthorized", answer
        finally:
            release.set()
        for future in half_heads:
            # Held or dropped, but never answered with anything but a client error: only a
            # socket was spent on it.
            sent = future.result(timeout=60)
            assert sent is None or sent == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", sent), sent

    assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    response = httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers=bearer(BOB), timeout=60)
    assert response.status_code == 200
