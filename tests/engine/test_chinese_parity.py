"""The seed's Chinese quick start through `/v1/classify` equals the zero-shot pipeline to 1e-5, on
torch and on ONNX (`zsc export onnx`), for a tiny model built like each preset's: a BERT with a
Chinese WordPiece vocab.txt and nothing else (Erlangshen, `model: chinese`) and a DeBERTa-v2 with
a SentencePiece Unigram tokenizer and its Precompiled normalizer (mDeBERTa, `model:
multilingual`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from edge import call
from transformers import pipeline

from serve_app.config import AppConfig
from serve_app.core.presets import CHINESE_TEMPLATE
from serve_app.devtools.chinese import SEED_LABELS, SEED_TEXTS, build_chinese_bert
from serve_app.devtools.families import build_family_model
from serve_app.engine.engine import Engine
from serve_app.engine.export import export_onnx

BUILDERS = {
    "erlangshen-like": lambda out: build_chinese_bert(out, seed=1),
    "mdeberta-like": lambda out: build_family_model("mdeberta-v3", out, seed=2),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory: Path = BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "m")
    export_onnx(directory)
    return directory


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("multi_label", [False, True], ids=["single", "multi"])
def test_chinese_seed_example_equals_the_pipeline(
    model: Path, backend: str, multi_label: bool
) -> None:
    config = AppConfig(model=str(model), backend=backend)
    engine = Engine(config.model_settings(), str(model))
    body: dict[str, Any] = {
        "texts": SEED_TEXTS,
        "labels": SEED_LABELS,
        "hypothesis_template": CHINESE_TEMPLATE,
        "multi_label": multi_label,
    }
    answer = call(config, engine, "POST", "/v1/classify", json=body)
    assert answer.status_code == 200, answer.text
    reference = pipeline("zero-shot-classification", model=str(model), device="cpu")
    expected = reference(
        SEED_TEXTS,
        candidate_labels=SEED_LABELS,
        hypothesis_template=CHINESE_TEMPLATE,
        multi_label=multi_label,
    )
    results = answer.json()["results"]
    assert [r["sequence"] for r in results] == SEED_TEXTS
    for got, want in zip(results, expected):
        assert got["labels"] == want["labels"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert answer.json()["truncated"] == []
