"""The token window: the smallest of the tokenizer's saved limit, the positions the model can use
and `max_length`. RoBERTa-style models count positions after the padding index, so their 514-row
table takes 512 tokens; a tokenizer saved without `model_max_length` must not let 514 through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from edge import call
from parity import as_list, assert_same_results
from transformers import AutoTokenizer, pipeline

from serve_app.config import AppConfig, LimitsConfig, ModelConfig
from serve_app.core.requests import prepare_request
from serve_app.devtools.test_models import build_test_model
from serve_app.engine.engine import Engine
from serve_app.engine.export import export_onnx
from serve_app.engine.source import ModelLoadError, read_model_files
from serve_app.engine.tokenizer import pair_window

# About 2,000 tokens with the test tokenizer: far past any window here.
LONG = "The central bank raised interest rates again to fight inflation. " * 170
LABELS = ["finance", "sports"]


def without_saved_limit(directory: Path) -> Path:
    """Drop `model_max_length` from tokenizer_config.json, as some hub uploads ship it."""
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("model_max_length", None)
    config_file.write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(directory).model_max_length > 100_000
    return directory


@pytest.fixture(scope="module")
def roberta_514(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa with the real 514-row position table, its tokenizer without a limit,
    and its ONNX file (export.py, what `zsc export onnx` runs)."""
    directory = build_test_model(tmp_path_factory.mktemp("window") / "roberta", max_length=512)
    without_saved_limit(directory)
    export_onnx(directory)
    return directory


def classify(engine: Engine, texts: list[str]) -> tuple[list[dict], list[int]]:
    request = prepare_request(texts, LABELS, "This example is {}.", False, LimitsConfig())
    result = engine.classify(request)
    return [r.as_dict() for r in result.results], result.truncated


def test_usable_positions_follow_the_padding_offset(roberta_514: Path) -> None:
    assert json.loads((roberta_514 / "config.json").read_text())["max_position_embeddings"] == 514
    assert read_model_files(str(roberta_514)).max_positions == 512


@pytest.mark.parametrize(("backend", "tol"), [("torch", 1e-5), ("onnx", 1e-4)])
def test_a_2000_token_text_is_cut_at_512_and_equals_the_pipeline(
    roberta_514: Path, backend: str, tol: float
) -> None:
    engine = Engine(ModelConfig(model=str(roberta_514), backend=backend), str(roberta_514))
    assert engine.window == 512
    engine.warm_up()
    texts = [LONG, "Our team won the final."]
    assert len(engine.tokenizer._core.encode(LONG).ids) > 1900
    ours, truncated = classify(engine, texts)
    assert truncated == [0]
    # The pipeline with the limit the model really has (without it, the pipeline itself fails).
    tokenizer = AutoTokenizer.from_pretrained(roberta_514, model_max_length=512)
    reference = pipeline(
        "zero-shot-classification", model=str(roberta_514), tokenizer=tokenizer, device="cpu"
    )
    assert_same_results(ours, as_list(reference(texts, candidate_labels=LABELS)), tol)
    # Over HTTP (the real app in-process): a 200 that names the cut text, not a 500.
    config = AppConfig(model=str(roberta_514), backend=backend, jobs={"enabled": False})
    answer = call(config, engine, "POST", "/v1/classify", json={"texts": texts, "labels": LABELS})
    assert answer.status_code == 200, answer.text
    assert answer.json()["truncated"] == [0]
    assert_same_results(answer.json()["results"], ours, 1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_model_with_a_64_position_table_starts_and_answers(tmp_path: Path, backend: str) -> None:
    # RoBERTa-style: 64 rows, 62 usable; the tokenizer says nothing.
    directory = without_saved_limit(build_test_model(tmp_path / "m", max_length=62))
    assert json.loads((directory / "config.json").read_text())["max_position_embeddings"] == 64
    if backend == "onnx":
        export_onnx(directory)
    engine = Engine(ModelConfig(model=str(directory), backend=backend), str(directory))
    assert engine.window == 62
    engine.warm_up()
    ours, truncated = classify(engine, [LONG])
    assert truncated == [0] and len(ours) == 1


def test_the_window_is_the_smallest_known_limit() -> None:
    huge = int(1e30)  # what a tokenizer saved without a limit reports
    assert pair_window("m", huge, 512, None) == 512
    assert pair_window("m", 512, 514, None) == 512
    assert pair_window("m", 512, 510, None) == 510
    assert pair_window("m", 512, 512, 128) == 128
    assert pair_window("m", 256, 512, 1024) == 256  # max_length cannot widen the model
    assert pair_window("m", 300, None, None) == 300
    with pytest.raises(ModelLoadError, match="set max_length"):
        pair_window("m", huge, None, None)


def test_files_that_cannot_serve_the_window_stop_at_start_with_one_line(
    roberta_514: Path, tmp_path: Path
) -> None:
    """An ONNX file from a 64-row model beside a config and tokenizer that say 512: the
    warm-up's full-window forward fails, and the replica stops with one line naming the fix."""
    import shutil

    small = without_saved_limit(build_test_model(tmp_path / "small", max_length=62))
    export_onnx(small)
    mixed = tmp_path / "mixed"
    shutil.copytree(roberta_514, mixed)
    shutil.copy(small / "onnx" / "model.onnx", mixed / "onnx" / "model.onnx")
    engine = Engine(ModelConfig(model=str(mixed), backend="onnx"), str(mixed))
    with pytest.raises(ModelLoadError, match="set max_length") as failure:
        engine.warm_up()
    assert "\n" not in str(failure.value) and "512" in str(failure.value)
