"""The torch backend: `AutoModelForSequenceClassification` in fp32/fp16/bf16, or dynamically
quantised to int8 (`backend: int8`, CPU only, one pair per forward).

In half precision a batch whose logits are not all finite (fp16 overflows past 65504: DeBERTa-v3
does, microsoft/DeBERTa#77) runs again in float32, from the fp32 weights loaded the first time
it happens, and is counted (`on_float32_rerun`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from serve_app.engine.protocol import Backend, LoadRequest, PaddedBatch
from serve_app.engine.source import ModelLoadError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HALF = (torch.float16, torch.bfloat16)


def resolve_dtype(requested: str, device: str) -> str:
    """`auto`: float32 on CPU; on a GPU bfloat16 where it runs it (fp32's range, so no
    overflow), else float16."""
    if requested != "auto":
        return requested
    if device != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


class TorchBackend:
    name = "torch"
    max_rows_per_forward: int | None = None

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        threads: int,
        request: LoadRequest | None = None,
    ) -> None:
        self.model = model
        self._device = device
        self.device = device.type
        self.threads = threads
        self._request = request
        self._float32: torch.nn.Module | None = None
        self._float32_lock = threading.Lock()
        # Called with the rows of each half-precision batch rerun in float32 (for metrics).
        self.on_float32_rerun: Callable[[int], None] | None = None

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
        dtype = resolve_dtype(request.dtype, request.device)
        model = AutoModelForSequenceClassification.from_pretrained(
            request.files.source, revision=request.revision, dtype=_DTYPES[dtype]
        )
        return model.eval()

    @classmethod
    def load(cls, request: LoadRequest) -> Backend:
        model = cls._load_model(request)
        device = torch.device(request.device)
        return cls(model.to(device), device, request.threads, request)

    def _float32_model(self) -> torch.nn.Module:
        """The model in float32, loaded from its files on the first overflow and kept."""
        with self._float32_lock:
            if self._float32 is None:
                assert self._request is not None  # half precision is only loaded by `load`
                model = AutoModelForSequenceClassification.from_pretrained(
                    self._request.files.source,
                    revision=self._request.revision,
                    dtype=torch.float32,
                )
                self._float32 = model.eval().to(self._device)
            return self._float32

    def forward(self, batch: PaddedBatch) -> np.ndarray:
        inputs = {
            "input_ids": torch.from_numpy(batch.input_ids).to(self._device),
            "attention_mask": torch.from_numpy(batch.attention_mask).to(self._device),
        }
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids).to(self._device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            if logits.dtype in _HALF and not bool(torch.isfinite(logits).all()):
                logits = self._float32_model()(**inputs).logits
                if self.on_float32_rerun is not None:
                    self.on_float32_rerun(int(logits.shape[0]))
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
