"""Model runtimes behind the `Backend` protocol, by the name `backend:` selects.

Each lives in its own module, imported only when chosen, so an ONNX replica never imports
torch. To add one: a module with a `BackendType` class, and a line here.
"""

from __future__ import annotations

import importlib

from serve_app.engine.protocol import BackendType

# backend name -> "module:class" of its BackendType
BACKENDS: dict[str, str] = {
    "torch": "serve_app.engine.backends.torch_backend:TorchBackend",
    "int8": "serve_app.engine.backends.torch_backend:TorchInt8Backend",
    "onnx": "serve_app.engine.backends.onnx_backend:OnnxBackend",
}


def backend_type(name: str) -> BackendType:
    module, _, cls = BACKENDS[name].partition(":")
    loaded: BackendType = getattr(importlib.import_module(module), cls)
    return loaded
