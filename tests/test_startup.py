"""The app refuses to start, with one message naming the fix, when the model cannot serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.app import StartupError, build_app
from serve_app.config import AppConfig
from serve_app.devtools.test_models import build_test_model


def test_unreachable_hub_fails_fast_naming_a_local_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StartupError) as info:
        build_app(AppConfig(model="cross-encoder/some-model-not-in-the-cache"))
    message = str(info.value)
    assert "local directory" in message and "make demo" in message


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        build_app(AppConfig(model=str(tmp_path / "nowhere")))


def test_model_without_entailment_label_fails_at_start(tmp_path: Path) -> None:
    directory = build_test_model(tmp_path / "sentiment", label_order=("negative", "positive"))
    with pytest.raises(StartupError, match="no label starting with 'entail'"):
        build_app(AppConfig(model=str(directory)))


# `serve run` builds the app before it starts Ray; were the builder to let this model through,
# it would start a local Ray: a `ray` test, out of `make test-fast`.
@pytest.mark.ray
def test_serve_run_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    serve = Path(sys.executable).parent / "serve"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            str(serve),
            "run",
            "--name",
            "zsc",
            "serve_app.app:build_app",
            "model=org/not-cached-model",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert "zsc: Cannot load the model 'org/not-cached-model'" in output


def test_builder_args_are_typed() -> None:
    with pytest.raises(ValueError):
        AppConfig.model_validate({"model": "x", "batching": {"max_batch_tokenz": 5}})
    with pytest.raises(ValueError):
        AppConfig.model_validate({"model": "x", "device": "tpu"})
