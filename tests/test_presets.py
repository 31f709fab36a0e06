"""Model presets: `model: chinese` / `model: multilingual` resolve, when the config is validated,
to a pinned hub model with its label map and default template; offline, the start stops with one
line naming the hub id; served from a Hugging Face cache that holds the pinned revision (here a
tiny model built like the real one), `/v1/model` names the preset and `/v1/classify` without a
template uses the preset's and equals the pipeline."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import huggingface_hub
import pytest
from edge import call, hub_cache_with
from transformers import pipeline

from serve_app.app import StartupError, build_app
from serve_app.config import DEFAULT_TEMPLATE, AppConfig
from serve_app.core.presets import CHINESE_TEMPLATE, PRESETS
from serve_app.devtools.chinese import SEED_LABELS, SEED_TEXTS, build_chinese_bert
from serve_app.engine.backends import backend_type
from serve_app.engine.engine import Engine
from serve_app.engine.source import resolve_model_source

ERLANGSHEN = "IDEA-CCNL/Erlangshen-Roberta-110M-NLI"
MDEBERTA = "MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7"


def test_chinese_resolves_to_the_pinned_hub_model() -> None:
    config = AppConfig(model="chinese")
    assert config.model == ERLANGSHEN
    assert config.revision == PRESETS["chinese"].revision
    assert config.label_map is not None
    assert config.label_map.model_dump() == {"entailment": 2, "contradiction": 0}
    assert config.preset == "chinese"
    assert config.default_hypothesis_template == CHINESE_TEMPLATE == "这段文本是关于{}的。"
    # What the replicas get: the hub id, the revision and the map, and the preset's template.
    settings = config.model_settings()
    assert (settings.model, settings.revision) == (ERLANGSHEN, config.revision)
    assert settings.label_indices_map() == {"entailment": 2, "contradiction": 0}
    assert pickle.loads(pickle.dumps(config)).default_hypothesis_template == CHINESE_TEMPLATE


def test_multilingual_resolves_to_the_pinned_hub_model() -> None:
    config = AppConfig.model_validate({"model": "Multilingual"})
    assert (config.model, config.preset) == (MDEBERTA, "multilingual")
    assert config.revision == PRESETS["multilingual"].revision
    assert config.label_indices_map() == {"entailment": 0, "contradiction": 2}
    assert config.default_hypothesis_template == "This example is {}."


def test_each_preset_is_pinned_to_a_commit() -> None:
    for preset in PRESETS.values():
        assert preset.revision is not None and re.fullmatch(r"[0-9a-f]{40}", preset.revision)
        assert preset.hypothesis_template.count("{}") == 1


def test_what_is_given_beside_a_preset_wins() -> None:
    config = AppConfig.model_validate(
        {"model": "chinese", "revision": "main", "label_map": {"entailment": 1}}
    )
    assert config.model == ERLANGSHEN and config.revision == "main"
    assert config.label_indices_map() == {"entailment": 1, "contradiction": None}


def test_hub_ids_and_directories_work_as_before(tmp_path: Path) -> None:
    config = AppConfig(model="cross-encoder/nli-MiniLM2-L6-H768")
    assert config.preset is None and config.revision is None and config.label_map is None
    assert config.default_hypothesis_template == DEFAULT_TEMPLATE
    assert AppConfig(model="./chinese").model == "./chinese"  # a path, not the preset


@pytest.mark.parametrize("preset,hub_id", [("chinese", ERLANGSHEN), ("multilingual", MDEBERTA)])
def test_offline_start_names_the_resolved_hub_id(
    preset: str, hub_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(StartupError) as info:
        build_app(AppConfig(model=preset))
    message = str(info.value)
    assert "\n" not in message
    assert f"preset {preset!r}" in message
    assert f"Cannot load the model {hub_id!r}" in message and "local directory" in message


def test_chinese_preset_served_from_the_cache_uses_its_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = AppConfig(model="chinese")
    assert config.revision is not None
    tiny = build_chinese_bert(tmp_path / "built")
    cache = hub_cache_with(tmp_path / "hub", ERLANGSHEN, config.revision, tiny)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    build_app(config)  # resolves the preset's revision from the cache, checks its label map
    source = resolve_model_source(
        config.model, config.revision, backend_type(config.backend).files(config.onnx_file)
    )
    assert config.revision in source
    engine = Engine(config.model_settings(), source)

    info = call(config, engine, "GET", "/v1/model").json()
    assert (info["preset"], info["model"]) == ("chinese", ERLANGSHEN)
    assert info["revision"] == config.revision
    assert info["hypothesis_template"] == CHINESE_TEMPLATE
    assert (info["entailment_index"], info["contradiction_index"]) == (2, 0)

    body = {"texts": SEED_TEXTS, "labels": SEED_LABELS}  # no template: the preset's
    answer = call(config, engine, "POST", "/v1/classify", json=body)
    assert answer.status_code == 200, answer.text
    reference = pipeline("zero-shot-classification", model=source, device="cpu")
    expected = reference(
        SEED_TEXTS, candidate_labels=SEED_LABELS, hypothesis_template=CHINESE_TEMPLATE
    )
    for got, want in zip(answer.json()["results"], expected):
        assert got["labels"] == want["labels"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
