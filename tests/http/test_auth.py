"""API keys: their configuration and lookup, then the real FastAPI app served in this process
(tests/edge.py), over HTTP, with keys from both `auth.api_key_hashes` and the environment
(`auth.api_keys_env`)."""

from __future__ import annotations

import os

import httpx
import pytest
from conftest import ENV_KEYS, ENV_KEYS_VAR
from live import bearer, submit_job
from pydantic import ValidationError

from serve_app.config import AuthConfig
from serve_app.http.middleware.auth import SCHEME_NAME, ApiKeys, AuthConfigError, hash_key

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


def test_zsc_hash_key_prints_only_the_configured_form() -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app

    piped = CliRunner().invoke(app, ["hash-key"], input="abc\n")
    assert piped.exit_code == 0 and piped.stdout == hash_key("abc") + "\n"
    assert CliRunner().invoke(app, ["hash-key", "abc"]).stdout == hash_key("abc") + "\n"
    AuthConfig(api_key_hashes={"x": piped.stdout.strip()})


# ---- the real app, over HTTP -----------------------------------------------------------------
# Keys come from both sources at once: alice's digest from `auth.api_key_hashes`, and the plain
# keys conftest put in the environment (ENV_KEYS_VAR), named by `auth.api_keys_env` as a pod
# names ZSC_API_KEYS, and hashed when the app is built, as the ingress replica does at start.

CLASSIFY = {"text": "The striker scored twice.", "labels": ["sports", "cooking"]}
HF_BODY = {"inputs": "The striker scored twice.", "parameters": {"candidate_labels": ["a", "b"]}}
(ENV_NAME, ENV_KEY), *_ = ENV_KEYS.items()


@pytest.fixture(scope="module")
def url(edge_server) -> str:
    return edge_server(
        auth={"api_key_hashes": {"alice": hash_key(ALICE_KEY)}, "api_keys_env": ENV_KEYS_VAR},
        jobs={"enabled": True},
        environ=dict(os.environ),
    )


def test_keys_from_hashes_and_from_the_environment_are_both_served(url: str) -> None:
    for key, scheme in ((ALICE_KEY, "Bearer"), (ENV_KEY, "bearer")):  # the scheme is caseless
        response = httpx.post(
            f"{url}/v1/classify", json=CLASSIFY, headers=bearer(key, scheme), timeout=60
        )
        assert response.status_code == 200, response.text
        assert sorted(response.json()["results"][0]["labels"]) == ["cooking", "sports"]


def test_v1_needs_a_valid_bearer_key(url: str) -> None:
    missing = httpx.post(f"{url}/v1/classify", json=CLASSIFY, timeout=30)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="zsc"'
    assert missing.json()["error"]["type"] == "unauthorized"

    wrong = httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers=bearer("not-a-key"), timeout=30)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer realm="zsc", error="invalid_token"'
    assert "not-a-key" not in wrong.text

    # A valid key under another scheme, or a key's name instead of the key: no.
    for headers in (bearer(ALICE_KEY, "Basic"), bearer("alice"), bearer(ENV_NAME)):
        refused = httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers=headers, timeout=30)
        assert refused.status_code == 401, headers


def test_the_key_is_checked_before_the_body_is_read(url: str) -> None:
    # Bodies the app refuses once read (not JSON) and before (over the 8 MiB default limit):
    # without a key both are 401, so no body was looked at; with one, each gets its own refusal.
    for content, status, error in (
        (b'{"text": ', 400, "invalid_json"),
        (b" " * (8 * 1024 * 1024 + 1), 413, "body_too_large"),
    ):
        headers = {"Content-Type": "application/json"}
        without = httpx.post(f"{url}/v1/classify", content=content, headers=headers, timeout=60)
        assert without.status_code == 401, error
        headers.update(bearer(ALICE_KEY))
        with_key = httpx.post(f"{url}/v1/classify", content=content, headers=headers, timeout=60)
        assert with_key.status_code == status and with_key.json()["error"]["type"] == error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/model"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/nothing-here"),
        ("GET", "/v1"),
        ("POST", "/"),
        ("POST", "/predict"),
    ],
)
def test_protected_routes_under_the_prefix_are_401_without_a_key(
    url: str, method: str, path: str
) -> None:
    body = HF_BODY if method == "POST" else None
    response = httpx.request(method, url + path, json=body, timeout=30)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "unauthorized"


def test_health_page_and_docs_stay_open_and_declare_the_scheme(url: str) -> None:
    assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{url}/", timeout=30).status_code == 200  # the page asks for a key
    assert httpx.get(f"{url}/docs", timeout=30).status_code == 200
    assert httpx.get(f"{url}/v10", timeout=30).status_code == 404  # not under /v1
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"][SCHEME_NAME] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: 'Authorization: Bearer <key>'.",
    }
    protected = [
        ("/v1/classify", "post"),
        ("/v1/model", "get"),
        ("/v1/jobs", "post"),
        ("/", "post"),
        ("/predict", "post"),
    ]
    for path, method in protected:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{SCHEME_NAME: []}], (path, method)
        assert "401" in operation["responses"], (path, method)
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert httpx.get(f"{url}/openapi.json", timeout=30).json() == spec  # built once, stays


def test_the_key_name_owns_the_job(url: str) -> None:
    """The name of the key (here one read from the environment) reaches the routes: jobs are
    its own, and another key's caller cannot see them."""
    job_id = submit_job(url, ENV_KEY, ["one", "two"])
    mine = httpx.get(f"{url}/v1/jobs/{job_id}", headers=bearer(ENV_KEY), timeout=30)
    assert mine.status_code == 200, mine.text
    theirs = httpx.get(f"{url}/v1/jobs/{job_id}", headers=bearer(ALICE_KEY), timeout=30)
    assert theirs.status_code == 404, theirs.text
    listed = httpx.get(f"{url}/v1/jobs", headers=bearer(ALICE_KEY), timeout=30).json()
    assert job_id not in [job["id"] for job in listed["data"]]
