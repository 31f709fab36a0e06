"""API keys without Ray: configuration, lookup, and the middleware on a small FastAPI app."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serve_app.http.middleware.auth import SCHEME_NAME, ApiKeys, AuthConfigError, hash_key, install_auth
from serve_app.config import AuthConfig

ALICE_KEY = "alice-key-0f3c9a"
BOB_KEY = "bob-key-77e1d2"


def keys(environ: dict[str, str] | None = None) -> ApiKeys:
    config = AuthConfig(api_key_hashes={"alice": hash_key(ALICE_KEY)})
    return ApiKeys.from_config(config, environ or {})


def test_hash_key_is_the_configured_form() -> None:
    assert hash_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    AuthConfig(api_key_hashes={"x": hash_key("abc")})  # accepted as is


@pytest.mark.parametrize("bad", ["abc", "sha256:xyz", "md5:" + "0" * 32, "sha256:" + "0" * 63])
def test_a_malformed_hash_fails_at_config_time(bad: str) -> None:
    with pytest.raises(ValidationError):
        AuthConfig(api_key_hashes={"x": bad})


def test_keys_from_config_and_environment_are_looked_up_by_name() -> None:
    api_keys = keys({"ZSC_API_KEYS": f" bob:{BOB_KEY} , carol:k:with:colons,"})
    assert api_keys.enabled
    assert api_keys.name_of(ALICE_KEY.encode()) == "alice"
    assert api_keys.name_of(BOB_KEY.encode()) == "bob"
    assert api_keys.name_of(b"k:with:colons") == "carol"
    assert api_keys.name_of(b"nope") is None
    assert not ApiKeys.from_config(AuthConfig(), {}).enabled


@pytest.mark.parametrize(
    "value", ["bob", f"bob:{BOB_KEY},bob:other", f"alice:{BOB_KEY}", f":{BOB_KEY}"]
)
def test_bad_environment_entries_are_refused_without_echoing_keys(value: str) -> None:
    with pytest.raises(AuthConfigError) as info:
        keys({"ZSC_API_KEYS": value})
    assert BOB_KEY not in str(info.value)


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict[str, str | None]:
        return {"key_name": getattr(request.state, "api_key_name", None)}

    install_auth(app, keys({"ZSC_API_KEYS": f"bob:{BOB_KEY}"}))
    # root_path as Serve sets it for an app under a route prefix.
    return TestClient(app, root_path="/myapp")


def test_v1_needs_a_valid_key_and_names_it(client: TestClient) -> None:
    missing = client.post("/myapp/v1/echo")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="zsc"'
    assert missing.json()["error"]["type"] == "unauthorized"

    wrong = client.post("/myapp/v1/echo", headers={"Authorization": "Bearer not-a-key"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "not-a-key" not in wrong.text

    basic = client.post("/myapp/v1/echo", headers={"Authorization": f"Basic {BOB_KEY}"})
    assert basic.status_code == 401

    ok = client.post("/myapp/v1/echo", headers={"Authorization": f"bearer {BOB_KEY}"})
    assert ok.status_code == 200 and ok.json() == {"key_name": "bob"}


def test_unknown_v1_paths_are_401_not_404_without_a_key(client: TestClient) -> None:
    assert client.get("/myapp/v1/nothing-here").status_code == 401
    assert client.get("/myapp/v1").status_code == 401
    assert client.get("/myapp/v10").status_code == 404  # not under /v1


def test_health_and_docs_stay_open_and_declare_the_scheme(client: TestClient) -> None:
    assert client.get("/myapp/healthz").status_code == 200
    assert client.get("/myapp/docs").status_code == 200
    spec = client.get("/myapp/openapi.json").json()
    assert spec["components"]["securitySchemes"][SCHEME_NAME] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: 'Authorization: Bearer <key>'.",
    }
    assert spec["paths"]["/v1/echo"]["post"]["security"] == [{SCHEME_NAME: []}]
    assert "401" in spec["paths"]["/v1/echo"]["post"]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert client.get("/myapp/openapi.json").json() == spec  # built once, stays the same


def test_zsc_hash_key_prints_only_the_configured_form() -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app

    piped = CliRunner().invoke(app, ["hash-key"], input="abc\n")
    assert piped.exit_code == 0 and piped.stdout == hash_key("abc") + "\n"
    assert CliRunner().invoke(app, ["hash-key", "abc"]).stdout == hash_key("abc") + "\n"
    AuthConfig(api_key_hashes={"x": piped.stdout.strip()})
