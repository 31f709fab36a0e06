"""The `zsc` command (`serve_app.cli.main`); needs only the light client's dependencies, and
imports what a server-side command needs (torch, ONNX Runtime) when that command runs."""

from serve_app.cli.main import app, main

__all__ = ["app", "main"]
