"""Closed by default where reachable: a Serve HTTP bind other than loopback needs API keys, or
`auth.mode: none` said on purpose; loopback stays open, as a laptop user expects."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig, AuthConfig
from serve_app.http.app import create_app
from serve_app.http.middleware.auth import (
    OPEN_NOTICE,
    ApiKeys,
    exposure_problem,
    hash_key,
    is_loopback,
    open_or_keys,
)
from serve_app.http.routes.services import Services

KEYS = ApiKeys.from_config(AuthConfig(api_key_hashes={"ci": hash_key("k")}), {})
NO_KEYS = ApiKeys({})


def test_loopback_is_told_from_reachable_binds() -> None:
    for host in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost", None):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "zsc.example"):
        assert not is_loopback(host), host


def test_a_reachable_bind_without_keys_is_refused_naming_auth_mode_none() -> None:
    problem = exposure_problem(AuthConfig(), NO_KEYS, "0.0.0.0")
    assert problem is not None and "\n" not in problem
    assert "auth.mode: none" in problem and "ZSC_API_KEYS" in problem
    # Keys, or open on purpose, or loopback: allowed.
    assert exposure_problem(AuthConfig(), KEYS, "0.0.0.0") is None
    assert exposure_problem(AuthConfig(mode="none"), NO_KEYS, "0.0.0.0") is None
    assert exposure_problem(AuthConfig(), NO_KEYS, "127.0.0.1") is None


def test_mode_keys_needs_a_key_wherever_it_binds() -> None:
    problem = exposure_problem(AuthConfig(mode="keys"), NO_KEYS, "127.0.0.1")
    assert problem is not None and "auth.mode is keys" in problem
    assert exposure_problem(AuthConfig(mode="keys"), KEYS, "0.0.0.0") is None


def test_mode_none_drops_every_key_and_conflicts_with_configured_hashes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="ray.serve"):
        keys = open_or_keys(AuthConfig(mode="none"), {"ZSC_API_KEYS": "ci:secret"})
    assert not keys.enabled
    assert "auth.mode is none" in caplog.text and "open to anyone" in caplog.text
    with pytest.raises(ValueError, match="auth.mode: none conflicts"):
        AuthConfig(mode="none", api_key_hashes={"ci": hash_key("k")})


class _Model:
    async def classify(self, request: Any) -> Any:
        raise AssertionError

    async def check_labels(self, request: Any) -> None:
        raise AssertionError

    async def model_info(self) -> dict[str, Any]:
        return {"model": "m", "revision": None}


@pytest.mark.parametrize(
    ("auth", "keys", "said"),
    [
        ({"mode": "none"}, NO_KEYS, OPEN_NOTICE),
        ({}, KEYS, "keys"),
        ({}, NO_KEYS, "none (loopback only)"),
    ],
)
def test_get_model_says_who_may_call(auth: dict[str, Any], keys: ApiKeys, said: str) -> None:
    config = AppConfig.model_validate({"model": "m", "auth": auth})
    services = Services(config=config, scorer=_Model(), api_keys=keys)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://zsc") as client:
            headers = {"Authorization": "Bearer k"} if keys.enabled else {}
            return await client.get("/v1/model", headers=headers)

    response = asyncio.run(get())
    assert response.status_code == 200, response.text
    assert response.json()["auth"] == said


# A fresh local Ray whose Serve binds every interface (the session's binds loopback), then
# build_app with and without keys: it reads the bind from the running Serve.
DRIVER = """
import json, sys
import ray
from ray import serve
from serve_app.app import build_app
from serve_app.core.errors import StartupError

spec = json.loads(sys.argv[1])
ray.init(address="local", num_cpus=1, include_dashboard=False)
serve.start(http_options={"host": "0.0.0.0", "port": spec["port"]})
out = {}
for case, auth in spec["cases"].items():
    try:
        build_app({"model": spec["model"], "jobs": {"enabled": False}, "auth": auth})
        out[case] = None
    except StartupError as exc:
        out[case] = str(exc)
print("RESULT " + json.dumps(out))
ray.shutdown()  # stops this local cluster, Serve included
"""


@pytest.mark.ray
def test_build_app_refuses_a_reachable_serve_without_keys(tiny_model_dir: Path) -> None:
    from serve_app.devtools.ports import free_port

    spec = {
        "port": free_port(),
        "model": str(tiny_model_dir),
        "cases": {
            "no keys": {},
            "open on purpose": {"mode": "none"},
            "keys": {"api_key_hashes": {"ci": hash_key("k")}},
        },
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    refused = result["no keys"]
    assert refused is not None and "\n" not in refused
    assert "'0.0.0.0'" in refused and "auth.mode: none" in refused
    assert result["open on purpose"] is None and result["keys"] is None
