"""The ONNX Runtime backend: hub-layout files written by `zsc export onnx`, served with
`backend: onnx`, equal to the transformers pipeline, and never importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from onnx_models import LABEL_ORDERS
from parity import CASES, Case, as_list, assert_same_results
from transformers import pipeline

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.nli import parse_labels
from serve_app.core.requests import prepare_request
from serve_app.engine.backends import backend_type
from serve_app.engine.engine import Engine
from serve_app.engine.source import ModelLoadError

ONNX_TOLERANCE = 1e-4


def onnx_engine(directory: Path, **settings: object) -> Engine:
    return Engine(ModelConfig(model=str(directory), backend="onnx", **settings), str(directory))


def results(engine: Engine, case: Case) -> list[dict]:
    request = prepare_request(
        case.texts, case.labels, case.template, case.multi_label, LimitsConfig()
    )
    return [r.as_dict() for r in engine.classify(request).results]


def test_export_writes_the_hub_layout(onnx_models: dict[str, Path]) -> None:
    assert (onnx_models["default"] / "onnx" / "model.onnx").is_file()
    assert (onnx_models["default"] / "onnx" / "model_qint8_avx512_vnni.onnx").is_file()
    import onnx

    graph = onnx.load(str(onnx_models["bert"] / "onnx" / "model.onnx")).graph
    assert {i.name for i in graph.input} == {"input_ids", "token_type_ids", "attention_mask"}
    assert [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length"]


@pytest.mark.parametrize("name", [*LABEL_ORDERS, "bert"])
def test_onnx_scores_equal_the_pipeline(onnx_models: dict[str, Path], name: str) -> None:
    engine = onnx_engine(onnx_models[name])
    assert engine.backend.name == "onnx"
    assert engine.tokenizer.uses_token_types == (name == "bert")
    reference = pipeline("zero-shot-classification", model=str(onnx_models[name]), device="cpu")
    for case in CASES:
        pairwise = case.multi_label or len(parse_labels(case.labels)) == 1
        if name == "neutral_first" and pairwise:
            continue  # the pipeline's contradiction index is wrong for this map (test_parity)
        want = as_list(reference(case.texts, **case.pipeline_kwargs()))
        assert_same_results(results(engine, case), want, ONNX_TOLERANCE)


def test_a_quantised_file_loads_and_serves(onnx_models: dict[str, Path]) -> None:
    engine = onnx_engine(onnx_models["default"], onnx_file="onnx/model_qint8_avx512_vnni.onnx")
    assert engine.describe()["onnx_file"].endswith("model_qint8_avx512_vnni.onnx")
    case = next(c for c in CASES if c.name == "many_texts")
    for result in results(engine, case):
        assert sorted(result["labels"]) == sorted(case.labels)
        assert sum(result["scores"]) == pytest.approx(1.0, abs=1e-5)
        assert result["scores"] == sorted(result["scores"], reverse=True)


def test_the_fallback_file_and_a_missing_file(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    # A copy of a model exported this session (exporting again costs seconds, proves nothing new).
    top = tmp_path / "top"
    shutil.copytree(onnx_models["entailment_first"], top)
    (top / "onnx" / "model.onnx").rename(top / "model.onnx")  # the older layout, at the top
    assert onnx_engine(top).describe()["onnx_file"] == str(top / "model.onnx")
    (top / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match="zsc export onnx"):
        onnx_engine(top)


def test_a_hub_id_fetches_only_what_the_backend_needs() -> None:
    onnx_files = backend_type("onnx").files("onnx/model_qint8_arm64.onnx")
    assert "onnx/model_qint8_arm64.onnx" in onnx_files
    assert not any("safetensors" in f or f == "*.onnx" for f in onnx_files)
    assert backend_type("torch").files("onnx/model.onnx") == ["*.safetensors"]


def test_an_onnx_engine_never_imports_torch(onnx_models: dict[str, Path]) -> None:
    code = (
        "import json, sys\n"
        "from serve_app.config import LimitsConfig, ModelConfig\n"
        "from serve_app.core.requests import prepare_request\n"
        "from serve_app.engine.engine import Engine\n"
        f"d = {str(onnx_models['bert'])!r}\n"
        "engine = Engine(ModelConfig(model=d, backend='onnx'), d)\n"
        "engine.warm_up()\n"
        "r = engine.classify(prepare_request(['a text'], ['x', 'y'], 'It is {}.', False, LimitsConfig()))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'labels': r.results[0].labels}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False and sorted(answer["labels"]) == ["x", "y"]


def test_the_provider_follows_device_and_cuda_without_the_gpu_wheel_says_so() -> None:
    # device=auto picks CUDA only where onnxruntime-gpu offers it; on this CPU wheel, the CPU.
    onnx_type = backend_type("onnx")
    import onnxruntime

    expected = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    assert onnx_type.pick_device("auto") == expected
    if expected == "cpu":
        with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
            onnx_type.pick_device("cuda")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
