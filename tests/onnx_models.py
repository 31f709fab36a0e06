"""Tiny models with their ONNX files, as `zsc export onnx` writes them (the command users run):
RoBERTa-style in each label order, BERT-style, and one quantised file. Built once a session."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from serve_app.cli.main import app
from serve_app.devtools.test_models import build_test_model
from serve_app.engine.export import export_onnx

LABEL_ORDERS = {
    "default": ("contradiction", "entailment", "neutral"),
    "entailment_first": ("entailment", "neutral", "contradiction"),
    "neutral_first": ("neutral", "entailment", "contradiction"),
}


def export(directory: Path, *args: str) -> str:
    """`zsc export onnx DIRECTORY ...`, the command users run (in this process: a subprocess
    would import torch again for seconds); returns what it printed."""
    done = CliRunner().invoke(app, ["export", "onnx", str(directory), *args])
    assert done.exit_code == 0, f"{done.output}{done.exception!r}"
    return done.output


def build_onnx_models(root: Path) -> dict[str, Path]:
    built = {
        name: build_test_model(root / name, label_order=order, seed=i)
        for i, (name, order) in enumerate(LABEL_ORDERS.items())
    }
    built["bert"] = build_test_model(root / "bert", arch="bert", seed=7)
    # The default model through the command users run (with a quantised file); the others
    # through the function behind it.
    export(built["default"], "--quantize", "avx512_vnni")
    for name, directory in built.items():
        if name != "default":
            export_onnx(directory)
    return built
