"""Secrets stay out of reprs and logs: the config's secret fields and the ones read from the
environment (`ServerSecrets`, `ZSC_` prefix) are `SecretStr`; the code that uses them still gets
the values."""

from __future__ import annotations

import pytest

from serve_app.config import AppConfig, AuthConfig, ServerSecrets
from serve_app.http.middleware.auth import ApiKeys
from serve_app.jobs.store import store_url

PASSWORD = "pw-9f3a1c"
WHSEC = "whsec_c2VjcmV0LXZhbHVlLTEyMw=="
STORE = f"postgresql://zsc:{PASSWORD}@db/zsc"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZSC_API_KEYS", "ZSC_WEBHOOK_SECRET", "ZSC_JOBS_STORE"):
        monkeypatch.delenv(name, raising=False)


def test_config_repr_and_dump_hide_the_secrets_the_code_still_reads() -> None:
    config = AppConfig(jobs={"store": STORE, "webhook": {"secret": WHSEC}})
    for text in (repr(config), str(config), repr(config.jobs), str(config.model_dump())):
        assert PASSWORD not in text
        assert WHSEC not in text
    assert config.jobs.store_url == STORE
    assert config.jobs.webhook.secret is not None
    assert config.jobs.webhook.secret.get_secret_value() == WHSEC


def test_environment_secrets_are_read_with_the_zsc_prefix_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZSC_API_KEYS", "alice:key-alice-123")
    monkeypatch.setenv("ZSC_WEBHOOK_SECRET", WHSEC)
    monkeypatch.setenv("ZSC_JOBS_STORE", STORE)
    secrets = ServerSecrets()
    for text in (repr(secrets), str(secrets), str(secrets.model_dump())):
        assert "key-alice-123" not in text
        assert WHSEC not in text
        assert PASSWORD not in text
    assert secrets.webhook_secret is not None
    assert secrets.webhook_secret.get_secret_value() == WHSEC
    # The runner's store: the environment's URL over the configured one.
    assert store_url("sqlite:///jobs.sqlite3") == STORE
    keys = ApiKeys.from_config(AuthConfig(), secrets.key_environ(AuthConfig()))
    assert keys.name_of(b"key-alice-123") == "alice"


def test_unset_or_empty_variables_leave_the_config_in_charge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZSC_JOBS_STORE", "")  # an optional Secret key that is absent
    secrets = ServerSecrets()
    assert secrets.jobs_store is None and secrets.webhook_secret is None
    assert store_url("sqlite:///jobs.sqlite3") == "sqlite:///jobs.sqlite3"
    assert secrets.key_environ(AuthConfig()) == {}


def test_a_renamed_keys_variable_is_read_by_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSC_API_KEYS", "alice:key-alice-123")
    monkeypatch.setenv("OTHER_KEYS", "bob:key-bob-456")
    auth = AuthConfig(api_keys_env="OTHER_KEYS")
    assert ServerSecrets().key_environ(auth) == {"OTHER_KEYS": "bob:key-bob-456"}
