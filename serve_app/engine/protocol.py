"""The backend seam: what the engine needs from a model runtime, and nothing more.

A backend is loaded once per replica and turns one padded batch into logits. Tokenization,
scheduling, de-duplication, caching and the math live in the engine, so a new runtime (torch,
ONNX Runtime, ...) is one module in `backends/` that implements `BackendType` and is named in
`backends.BACKENDS` (docs/ARCHITECTURE.md, "Adding a backend").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# A pair after tokenization: input ids, and token type ids for models that use them (BERT).
# Tuples, so identical pairs hash equal and are computed once per batch.
Pair = tuple[tuple[int, ...], tuple[int, ...] | None]


@dataclass(frozen=True)
class PaddedBatch:
    """Right-padded int64 arrays of shape (pairs, longest pair)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model: the directory `from_pretrained` loads and what its config.json says."""

    source: str
    id2label: dict[int, str]
    max_positions: int | None  # tokens the position table takes (after any offset)
    random_weights: bool


@dataclass(frozen=True)
class LoadRequest:
    """What a backend is loaded with: the files, the device and dtype asked for, its threads."""

    files: ModelFiles
    device: str  # "cpu" or "cuda", as `BackendType.pick_device` resolved it
    dtype: str  # "auto", "float32", "float16" or "bfloat16"
    threads: int  # intra-op threads per forward
    revision: str | None = None
    onnx_file: str = "onnx/model.onnx"


class Backend(Protocol):
    """A loaded model runtime. `forward` may be called from several threads at once."""

    name: str
    device: str

    def forward(self, batch: PaddedBatch) -> np.ndarray:
        """Float32 logits of shape (rows, classes), in the batch's row order."""
        ...

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/model` shows about this runtime (dtype, threads, parameters, ...)."""
        ...


class BackendType(Protocol):
    """A backend module's entry point: where it runs, and how it loads."""

    @staticmethod
    def pick_device(requested: str) -> str:
        """'cpu' or 'cuda' for a requested 'auto' | 'cpu' | 'cuda'; raises ModelLoadError when
        the device asked for is not there."""
        ...

    @staticmethod
    def load(request: LoadRequest) -> Backend: ...

    @staticmethod
    def files(onnx_file: str) -> list[str]:
        """`allow_patterns` of the hub files this backend needs beside config and tokenizer."""
        ...
