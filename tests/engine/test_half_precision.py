"""Half precision that overflows: a batch whose fp16 logits are not all finite runs again in
float32 and is counted, so callers get finite scores equal to float32's. On CPU, with a tiny
model whose weights are scaled so that its activations pass fp16's 65504 (as DeBERTa-v3's do,
microsoft/DeBERTa#77)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.requests import prepare_request
from serve_app.devtools.test_models import build_test_model
from serve_app.engine.backends.torch_backend import resolve_dtype
from serve_app.engine.engine import Engine
from serve_app.engine.scheduling import pad

TEXTS = ["The central bank raised interest rates.", "Our team won the final!", "Rain tomorrow."]
LABELS = ["finance", "sports", "weather"]


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its first feed-forward output scaled by 1e5: finite in float32 (the
    LayerNorm after it brings it back), past fp16's range before that LayerNorm."""
    directory = build_test_model(tmp_path_factory.mktemp("fp16") / "m", seed=4)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    with torch.no_grad():
        dense = model.roberta.encoder.layer[0].output.dense
        dense.weight.mul_(1e5)
        dense.bias.mul_(1e5)
    model.save_pretrained(directory)
    return directory


def engine(directory: Path, dtype: str) -> Engine:
    return Engine(ModelConfig(model=str(directory), device="cpu", dtype=dtype), str(directory))


def classify(e: Engine, multi_label: bool) -> np.ndarray:
    request = prepare_request(TEXTS, LABELS, "This example is {}.", multi_label, LimitsConfig())
    results = e.classify(request).results
    return np.array([[dict(zip(r.labels, r.scores))[label] for label in LABELS] for r in results])


def test_an_overflowing_fp16_batch_reruns_in_float32_and_is_counted(overflowing: Path) -> None:
    half, full = engine(overflowing, "float16"), engine(overflowing, "float32")
    assert half.describe()["dtype"] == "float16"
    reruns: list[int] = []
    half.on_float32_rerun = reruns.append

    # The premise of the test: this model's fp16 forward really overflows.
    request = prepare_request(TEXTS, LABELS, "This example is {}.", False, LimitsConfig())
    batch = pad(half.start(request).todo, half.tokenizer.pad_id, False)
    with torch.inference_mode():
        raw = half.backend.model(  # type: ignore[attr-defined]
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
        ).logits
    assert not torch.isfinite(raw).all()

    for multi_label in (False, True):
        got, want = classify(half, multi_label), classify(full, multi_label)
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() <= 0.02
    assert half.float32_reruns >= 1 and len(reruns) == half.float32_reruns
    assert sum(reruns) >= len(TEXTS) * len(LABELS)  # every pair of the two requests
    assert half.describe()["float32_reruns"] == half.float32_reruns
    assert full.float32_reruns == 0


def test_a_finite_fp16_batch_is_not_rerun(tiny_model_dir: Path) -> None:
    half = engine(tiny_model_dir, "float16")
    got = classify(half, False)
    assert np.isfinite(got).all() and half.float32_reruns == 0


def test_auto_dtype_is_float32_on_cpu_and_half_on_a_gpu() -> None:
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    if torch.cuda.is_available():  # checked on the GPU machine (bench/bench_gpu.py's host)
        expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        assert resolve_dtype("auto", "cuda") == expected
