"""The ONNX Runtime backend: a hub-layout ONNX file (`onnx/model.onnx`, or a quantised
`onnx/model_qint8_<arch>.onnx`) run by an `InferenceSession`. Imports no torch, so an image for it
can leave torch out; `zsc export onnx` writes these files for local models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve_app.engine.protocol import Backend, LoadRequest, PaddedBatch
from serve_app.engine.source import ModelLoadError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
FALLBACK_FILE = "model.onnx"
# Operators that quantise activations with a scale computed from each input tensor at run time
# (what `quantize_dynamic` writes): a graph holding one runs a pair per forward (protocol.py).
DYNAMIC_QUANTISATION = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def quantises_per_batch(path: Path) -> bool:
    """Whether the graph quantises activations with run-time, per-tensor scales."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in DYNAMIC_QUANTISATION for node in graph.node)


def onnx_path(source: str, onnx_file: str) -> Path:
    """The configured file, falling back to model.onnx at the top of the model directory."""
    for candidate in (Path(source) / onnx_file, Path(source) / FALLBACK_FILE):
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"backend=onnx: neither {onnx_file} nor {FALLBACK_FILE} is in {source}; export one with "
        f"`zsc export onnx {source}` or set onnx_file to a file the model has"
    )


class OnnxBackend:
    name = "onnx"

    def __init__(
        self,
        session: ort.InferenceSession,
        path: Path,
        device: str,
        threads: int,
        max_rows_per_forward: int | None = None,
    ) -> None:
        self.session = session
        self.path = path
        self.device = device
        self.threads = threads
        self.max_rows_per_forward = max_rows_per_forward
        self.on_float32_rerun: Callable[[int], None] | None = None  # ONNX files run as exported
        self._inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise ModelLoadError(
                f"{path} lacks the inputs {sorted(missing)}: not a text classifier"
            )
        self._output = next(
            (o.name for o in session.get_outputs() if o.name == "logits"),
            session.get_outputs()[0].name,
        )

    @staticmethod
    def pick_device(requested: str) -> str:
        available = CUDA in ort.get_available_providers()
        if requested == "auto":
            return "cuda" if available else "cpu"
        if requested == "cuda" and not available:
            raise ModelLoadError(
                "device=cuda with backend=onnx needs onnxruntime-gpu (CUDAExecutionProvider)"
            )
        return requested

    @staticmethod
    def files(onnx_file: str) -> list[str]:
        # The configured file, its external-data companion when it has one, and the fallback.
        return [onnx_file, f"{onnx_file}_data", FALLBACK_FILE]

    @staticmethod
    def load(request: LoadRequest) -> Backend:
        path = onnx_path(request.files.source, request.onnx_file)
        options = ort.SessionOptions()
        # Threads follow the replica's CPUs as torch's do; sub-batches run on the engine's
        # worker threads (sessions are safe to run concurrently), so no inter-op pool.
        options.intra_op_num_threads = request.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [CUDA, CPU] if request.device == "cuda" else [CPU]
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # a corrupt or incompatible file: one line that names it
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from None
        if request.device == "cuda" and session.get_providers()[0] != CUDA:
            raise ModelLoadError(f"ONNX Runtime could not place {path} on the GPU")
        rows = 1 if quantises_per_batch(path) else None
        return OnnxBackend(session, path, request.device, request.threads, rows)

    def forward(self, batch: PaddedBatch) -> np.ndarray:
        feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._inputs:
            types = batch.token_type_ids
            feed["token_type_ids"] = types if types is not None else np.zeros_like(batch.input_ids)
        (logits,) = self.session.run([self._output], feed)
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "onnx_file": str(self.path),
            "execution_providers": self.session.get_providers(),
            "threads": self.threads,
            "max_rows_per_forward": self.max_rows_per_forward,
        }
