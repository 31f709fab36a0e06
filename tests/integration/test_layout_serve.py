"""The default app, deployed with no sizing, uses every core of the machine."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from serve_app.app import build_app
from serve_app.config import AppConfig

pytestmark = pytest.mark.ray


def test_the_default_app_uses_every_core(
    serve_instance: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from conftest import delete_app
    from ray import serve

    name = "default-layout"
    # The import-path default: no classifier sizing at all (what `make run` deploys).
    app = build_app(
        AppConfig(model=str(tiny_model_dir), jobs={"db_path": str(tmp_path / "j.sqlite3")})
    )
    serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        info = httpx.get(f"{serve_instance}/{name}/v1/model", timeout=60).json()
        cores = len(os.sched_getaffinity(0))
        assert info["cpus"] == cores
        assert info["torch_threads"] * info["forward_workers"] == cores
    finally:
        delete_app(name)
