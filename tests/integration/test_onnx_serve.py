"""ONNX Runtime in a live Classifier replica: the pipeline's scores, and no torch in the process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from live import SERVE_NAMESPACE, actor_modules, replica_names
from parity import CASES, as_list, assert_same_results
from transformers import pipeline

ONNX_TOLERANCE = 1e-4

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("name", ["default", "bert"])
def test_served_onnx_equals_the_pipeline_and_the_replica_has_no_torch(
    deploy_app, onnx_models: dict[str, Path], name: str
) -> None:
    app = f"onnx-{name}"
    url = deploy_app(app, model=str(onnx_models[name]), backend="onnx")
    reference = pipeline("zero-shot-classification", model=str(onnx_models[name]), device="cpu")
    for case in CASES:
        response = httpx.post(f"{url}/v1/classify", json=case.body(), timeout=60)
        assert response.status_code == 200, response.text
        want = as_list(reference(case.texts, **case.pipeline_kwargs()))
        assert_same_results(response.json()["results"], want, ONNX_TOLERANCE)
    assert httpx.get(f"{url}/v1/model", timeout=30).json()["backend"] == "onnx"
    (replica,) = replica_names(app, "Classifier")
    modules = actor_modules(replica, SERVE_NAMESPACE)
    assert "onnxruntime" in modules and "torch" not in modules
