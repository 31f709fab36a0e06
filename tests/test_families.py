"""The parity matrix: every model family users pick for zero-shot classification, each in its real
architecture and tokenizer format (serve_app/devtools/families.py), through the Engine on torch
(to 1e-5) and ONNX (to 1e-4) against `transformers`' zero-shot pipeline on the same directory;
Chinese, emoji, full-width punctuation and a text cut at the window; token ids equal the
pipeline's own. And a directory that ships only its SentencePiece model loads as the pipeline
loads it, or stops with one line saying what to install."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from parity import as_list, assert_same_results
from transformers import pipeline

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.requests import prepare_request
from serve_app.devtools.families import FAMILIES, build_family_model
from serve_app.engine.engine import Engine
from serve_app.engine.export import export_onnx
from serve_app.engine.source import ModelLoadError

TOLERANCE = {"torch": 1e-5, "onnx": 1e-4}
TEXTS = [
    "央行再次加息以对抗通货膨胀，市场大幅下跌。",
    "Our team won the final after penalties! 🎉🏆",
    "Ｆｕｌｌ－ｗｉｄｔｈ：「新手机」的电池（两天）！？ 😀",
    "The central bank raised interest rates again to fight inflation. " * 12,  # past the window
    "  Heavy rain\tand strong winds\nare expected tomorrow.  ",
]
CUT = 3  # the index of the text longer than any tiny family's 64-token window
LABELS = ["finance", "体育", "weather 🌧️", "technology"]
TEMPLATES = ["This example is {}.", "这个例子是{}。"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family built once, with its ONNX file (export.py, what `zsc export onnx` runs)."""
    root = tmp_path_factory.mktemp("families")
    built = {}
    for i, family in enumerate(FAMILIES):
        built[family] = build_family_model(family, root / family, seed=i)
        export_onnx(built[family])
    return built


@pytest.fixture(scope="module")
def references(models: dict[str, Path]) -> dict[str, Any]:
    return {
        family: pipeline("zero-shot-classification", model=str(directory), device="cpu")
        for family, directory in models.items()
    }


def engine_for(directory: Path, backend: str) -> Engine:
    engine = Engine(ModelConfig(model=str(directory), backend=backend), str(directory))
    engine.warm_up()
    return engine


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_engine_equals_the_pipeline(
    models: dict[str, Path], references: dict[str, Any], family: str, backend: str
) -> None:
    engine = engine_for(models[family], backend)
    reference = references[family]
    for template in TEMPLATES:
        for multi_label in (False, True):
            request = prepare_request(TEXTS, LABELS, template, multi_label, LimitsConfig())
            result = engine.classify(request)
            assert CUT in result.truncated
            want = reference(
                TEXTS,
                candidate_labels=LABELS,
                hypothesis_template=template,
                multi_label=multi_label,
            )
            got = [r.as_dict() for r in result.results]
            assert_same_results(got, as_list(want), TOLERANCE[backend])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokens_equal_the_pipelines(
    models: dict[str, Path], references: dict[str, Any], family: str
) -> None:
    engine = Engine(ModelConfig(model=str(models[family])), str(models[family]))
    reference = references[family]
    hyps = [template.format(label) for template in TEMPLATES for label in LABELS]
    encoded = engine.tokenizer.encode(TEXTS, [hyps] * len(TEXTS))
    expected = []
    for text in TEXTS:
        for hyp in hyps:
            # The pipeline's own tokenization step, as its preprocess calls it on one pair.
            inputs = reference._parse_and_tokenize([[text, hyp]])
            types = inputs.get("token_type_ids") if engine.tokenizer.uses_token_types else None
            expected.append(
                (
                    tuple(inputs["input_ids"][0].tolist()),
                    tuple(types[0].tolist()) if types is not None else None,
                )
            )
    assert encoded.pairs == expected
    assert engine.tokenizer.uses_token_types == FAMILIES[family].token_types
    assert max(len(ids) for ids, _ in encoded.pairs) == engine.window == 64
    # Chinese, emoji and full-width characters are real pieces here, not all unknown.
    unk = reference.tokenizer.unk_token_id
    assert sum(i != unk for i in encoded.pairs[0][0]) > 8


def test_sentencepiece_families_ship_the_precompiled_normalizer(models: dict[str, Path]) -> None:
    for family in ("xlm-roberta", "mdeberta-v3", "deberta-v3"):
        normalizer = json.loads((models[family] / "tokenizer.json").read_text())["normalizer"]
        assert "Precompiled" in json.dumps(normalizer), family
        assert json.loads((models[family] / "tokenizer.json").read_text())["model"]["type"] == (
            "Unigram"
        )


def only_sentencepiece(directory: Path, out: Path) -> Path:
    """The directory without tokenizer.json: only the SentencePiece model to build one from."""
    shutil.copytree(directory, out)
    (out / "tokenizer.json").unlink()
    assert list(out.glob("*.model"))
    return out


@pytest.mark.parametrize("family", ["xlm-roberta", "mdeberta-v3"])
def test_a_directory_with_only_a_sentencepiece_model_loads_as_the_pipeline_does(
    models: dict[str, Path], tmp_path: Path, family: str
) -> None:
    directory = only_sentencepiece(models[family], tmp_path / family)
    engine = engine_for(directory, "torch")
    reference = pipeline("zero-shot-classification", model=str(directory), device="cpu")
    hyps = [f"This example is {label}." for label in LABELS]
    encoded = engine.tokenizer.encode(TEXTS, [hyps] * len(TEXTS))
    expected = [
        tuple(reference._parse_and_tokenize([[text, hyp]])["input_ids"][0].tolist())
        for text in TEXTS
        for hyp in hyps
    ]
    assert [ids for ids, _ in encoded.pairs] == expected
    request = prepare_request(TEXTS, LABELS, "This example is {}.", False, LimitsConfig())
    got = [r.as_dict() for r in engine.classify(request).results]
    assert_same_results(got, as_list(reference(TEXTS, candidate_labels=LABELS)))


def test_without_sentencepiece_such_a_directory_stops_with_one_line(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = only_sentencepiece(models["xlm-roberta"], tmp_path / "xlmr")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece fails
    with pytest.raises(ModelLoadError) as failure:
        Engine(ModelConfig(model=str(directory)), str(directory))
    message = str(failure.value)
    assert "\n" not in message
    assert "sentencepiece" in message and "tokenizer.json" in message
