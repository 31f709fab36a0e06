"""One real Serve app on the `chinese` preset: `build_app` resolves the preset in the driver (here
from a Hugging Face cache holding a tiny Erlangshen-like model at the pinned commit, as `hf
download` leaves it), the replicas load the resolved directory, and both HTTP and the Python
handle answer the seed's example with the preset's Chinese template, as the pipeline does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import huggingface_hub
import pytest
from edge import hub_cache_with
from ray import serve
from transformers import pipeline

from serve_app.config import AppConfig
from serve_app.core.presets import CHINESE_TEMPLATE, PRESETS
from serve_app.devtools.chinese import SEED_LABELS, SEED_TEXTS, build_chinese_bert

pytestmark = pytest.mark.ray

APP = "zh-preset"


def assert_like(results: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    for got, want in zip(results, expected, strict=True):
        assert got["labels"] == want["labels"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_chinese_preset_served_by_ray(
    deploy_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = PRESETS["chinese"]
    assert preset.revision is not None
    tiny = build_chinese_bert(tmp_path / "m")
    cache = hub_cache_with(tmp_path / "hub", preset.model, preset.revision, tiny)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    url = deploy_app(APP, model="chinese")

    info = httpx.get(f"{url}/v1/model", timeout=60).json()
    assert (info["preset"], info["model"], info["revision"]) == (
        "chinese",
        preset.model,
        preset.revision,
    )
    assert info["hypothesis_template"] == CHINESE_TEMPLATE
    source = info["source"]
    assert preset.revision in source and AppConfig(model="chinese").model == preset.model

    expected = pipeline("zero-shot-classification", model=source, device="cpu")(
        SEED_TEXTS, candidate_labels=SEED_LABELS, hypothesis_template=CHINESE_TEMPLATE
    )
    body = {"texts": SEED_TEXTS, "labels": SEED_LABELS}  # no template: the preset's
    answer = httpx.post(f"{url}/v1/classify", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert_like(answer.json()["results"], expected)

    handle = serve.get_app_handle(APP)
    direct = handle.classify.remote(SEED_TEXTS, SEED_LABELS).result(timeout_s=60)
    assert_like(direct["results"], expected)
