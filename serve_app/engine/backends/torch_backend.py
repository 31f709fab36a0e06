"""The torch backend: `AutoModelForSequenceClassification` in fp32/fp16/bf16, or dynamically
quantised to int8 (`backend: int8`, CPU only: 1.9-2.9x fp32 here)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from serve_app.engine.protocol import Backend, LoadRequest, PaddedBatch
from serve_app.engine.source import ModelLoadError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchBackend:
    name = "torch"
    max_rows_per_forward: int | None = None

    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int) -> None:
        self.model = model
        self._device = device
        self.device = device.type
        self.threads = threads

    @staticmethod
    def pick_device(requested: str) -> str:
        if requested == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device=cuda was asked for but no GPU is visible to this replica")
        return requested

    @staticmethod
    def files(onnx_file: str) -> list[str]:
        return ["*.safetensors"]

    @classmethod
    def _load_model(cls, request: LoadRequest) -> torch.nn.Module:
        # One intra-op pool per process: the engine runs `workers` forwards of this many threads.
        torch.set_num_threads(request.threads)
        dtype = request.dtype
        if dtype == "auto":
            dtype = "float16" if request.device == "cuda" else "float32"
        model = AutoModelForSequenceClassification.from_pretrained(
            request.files.source, revision=request.revision, dtype=_DTYPES[dtype]
        )
        return model.eval()

    @classmethod
    def load(cls, request: LoadRequest) -> Backend:
        model = cls._load_model(request)
        device = torch.device(request.device)
        return cls(model.to(device), device, request.threads)

    def forward(self, batch: PaddedBatch) -> np.ndarray:
        inputs = {
            "input_ids": torch.from_numpy(batch.input_ids).to(self._device),
            "attention_mask": torch.from_numpy(batch.attention_mask).to(self._device),
        }
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids).to(self._device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return logits.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        dtype = next(self.model.parameters()).dtype
        return {
            "backend": self.name,
            "device": str(self._device),
            "dtype": str(dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "threads": torch.get_num_threads(),
        }


class TorchInt8Backend(TorchBackend):
    """Linear layers quantised to int8 at load time (`torch.ao.quantization.quantize_dynamic`),
    one pair per forward."""

    name = "int8"
    # Dynamic quantisation scales each forward's activations by that tensor's range, padding
    # rows and other pairs included: one pair per forward keeps a pair's scores its own. Small
    # forwards cost no more per token on CPU, and no padding is computed at all.
    max_rows_per_forward: int | None = 1

    @staticmethod
    def pick_device(requested: str) -> str:
        if requested == "cuda":
            raise ModelLoadError("backend=int8 runs on CPU only; use dtype=float16 on cuda")
        return "cpu"

    @classmethod
    def load(cls, request: LoadRequest) -> Backend:
        model = torch.ao.quantization.quantize_dynamic(
            cls._load_model(request), {torch.nn.Linear}, dtype=torch.qint8
        )
        return cls(model, torch.device("cpu"), request.threads)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dtype": "qint8 (dynamic, Linear layers)",
            "max_rows_per_forward": self.max_rows_per_forward,
        }
