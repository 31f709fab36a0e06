"""The Hugging Face routes on the live app: the real InferenceClient's answers cross Ray as
/v1/classify's do, and the Hugging Face token it sends on its own never reaches Serve's logs
(tests/http/test_hf.py holds the routes' own behaviour, in-process)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import ray
from hf_helpers import KEY, LABELS, TEXT, classify, client, scored
from huggingface_hub.errors import HfHubHTTPError
from live import wait_for

from serve_app.core.keys import hash_key

pytestmark = pytest.mark.usefixtures("hf_client_online")


@pytest.fixture(scope="module")
def keys_url(deploy_app) -> str:
    return deploy_app("hf-keys", auth={"api_key_hashes": {"alice": hash_key(KEY)}})


def test_a_cached_hf_token_never_reaches_the_logs(
    zsc_url: str, keys_url: str, cached_hf_token: str
) -> None:
    marker = "zsc-hf-" + secrets.token_hex(8)
    # Keys off: the token is ignored and the answer is /v1/classify's, through Ray.
    answer = client(zsc_url, headers={"X-Request-ID": f"{marker}-open"}).zero_shot_classification(
        TEXT, LABELS
    )
    assert scored(answer) == classify(zsc_url, [TEXT], LABELS)[0]
    # Keys on: the cached token is a wrong key, refused by zsc itself.
    with pytest.raises(HfHubHTTPError) as info:
        client(keys_url, headers={"X-Request-ID": f"{marker}-keys"}).zero_shot_classification(
            TEXT, LABELS
        )
    assert info.value.response.status_code == 401

    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())

    def logged() -> list[str]:
        texts = [p.read_text(errors="replace") for p in logs_dir.rglob("*") if p.is_file()]
        found = all(any(f"{marker}-{tag}" in t for t in texts) for tag in ("open", "keys"))
        return texts if found else []

    # Serve tags each request's log lines with its X-Request-ID: both are written, now look.
    texts = wait_for(logged, 60, "the requests' access log lines")
    assert any(f"{marker}-keys" in t and "401" in t for t in texts)
    assert not any(cached_hf_token in text for text in texts), "the HF token reached a log"
