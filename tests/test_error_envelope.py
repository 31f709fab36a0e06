"""zsc's own failures answer in the JSON error envelope, so a plain-text 500 can only be Serve's
proxy (an ingress replica died), which clients resend; ours they must not. Real socket, no Ray."""

from __future__ import annotations

import threading

import httpx
import uvicorn
from fastapi import FastAPI

from conftest import free_port
from live import wait_for
from serve_app.http.errors import install_error_handlers
from serve_app.client.http import RetryPolicy


def test_an_unexpected_exception_is_a_json_500_that_clients_do_not_resend() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn to start", every_s=0.05)
        response = httpx.get(f"http://127.0.0.1:{port}/boom", timeout=10)
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert response.status_code == 500
    assert response.json() == {
        "error": {"type": "internal_error", "message": "the server failed to answer; this is a zsc bug"}
    }
    assert "secret" not in response.text
    assert RetryPolicy().delay(response, attempt=0) is None
