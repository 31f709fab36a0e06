"""A text's scores do not depend on what shares its batch: every backend (torch fp32, torch int8,
ONNX fp32, the quantised ONNX file) gives the same scores, to 1e-5, to texts scored one by one
and in one mixed batch; and concurrent HTTP requests (batched together by the Classifier) get
what each gets alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from parity import mixed_texts

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.requests import prepare_request
from serve_app.devtools.test_models import build_test_model
from serve_app.engine.engine import Engine
from serve_app.engine.export import quantize_onnx

TOLERANCE = 1e-5
LABELS = ["finance", "sports", "weather", "technology"]
BACKENDS = {
    "torch": {"backend": "torch"},
    "int8": {"backend": "int8"},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "onnx_file": "onnx/model_qint8_avx512_vnni.onnx"},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = build_test_model(tmp_path_factory.mktemp("invariance") / "m", seed=11)
    quantize_onnx(directory, "avx512_vnni")  # writes onnx/model.onnx first
    return directory


def scores(engine: Engine, texts: list[str]) -> list[dict[str, float]]:
    request = prepare_request(texts, LABELS, "This example is {}.", True, LimitsConfig())
    return [dict(zip(r.labels, r.scores)) for r in engine.classify(request).results]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_one_by_one_equals_one_mixed_batch(model: Path, name: str) -> None:
    engine = Engine(ModelConfig(model=str(model), **BACKENDS[name]), str(model))
    engine.warm_up()
    texts = mixed_texts()
    alone = [scores(engine, [text])[0] for text in texts]
    together = scores(engine, texts)
    worst = max(abs(a[label] - b[label]) for a, b in zip(alone, together) for label in LABELS)
    assert worst <= TOLERANCE, f"{name}: a text's scores moved by {worst} with its neighbours"
