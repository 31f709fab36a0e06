"""Long texts, thresholds and label objects across Ray: the handle, HTTP, jobs and the CLI on
the session's `zsc` app give what the in-process Engine gives for the same request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import wait_for

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.requests import prepare_request
from serve_app.engine.engine import Engine

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
LONG = "The striker scored twice and the crowd sang for the whole match. " * 12
TEXTS = [LONG, "Interest rates rose again."]
LABELS: list[Any] = [
    "sports",
    {"label": "finance", "hypothesis": "This text is about money or banks."},
    "weather",
]
OPTIONS: dict[str, Any] = {
    "long_text": "chunk",
    "chunk_stride": 4,
    "chunk_aggregate": "mean",
    "threshold": 0.3,
}


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path) -> list[dict[str, Any]]:
    engine = Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))
    request = prepare_request(TEXTS, LABELS, None, None, LimitsConfig(), **OPTIONS)
    return [r.as_dict() for r in engine.classify(request).results]


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["labels"] == w["labels"] and g["predicted"] == w["predicted"]
        assert g["windows"] == w["windows"]
        assert all(abs(a - b) <= 1e-5 for a, b in zip(g["scores"], w["scores"]))
    assert want[0]["windows"] > 1


def test_the_handle_and_http_take_the_new_fields(
    zsc_handle: Any, zsc_url: str, expected: list[dict[str, Any]]
) -> None:
    body = zsc_handle.classify.remote(TEXTS, LABELS, **OPTIONS).result(timeout_s=120)
    assert_same(body["results"], expected)
    answer = httpx.post(
        f"{zsc_url}/v1/classify", json={"texts": TEXTS, "labels": LABELS, **OPTIONS}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert_same(answer.json()["results"], expected)
    assert answer.json()["usage"]["pairs"] == sum(r["windows"] for r in expected) * len(LABELS)


def test_a_job_stores_and_runs_the_new_fields(zsc_url: str, expected: list[dict[str, Any]]) -> None:
    submitted = httpx.post(
        f"{zsc_url}/v1/jobs", json={"texts": TEXTS, "labels": LABELS, **OPTIONS}, timeout=60
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["long_text"] == "chunk" and job["chunk_stride"] == 4
    assert job["chunk_aggregate"] == "mean" and job["threshold"] == 0.3
    assert job["labels"] == ["sports", "finance", "weather"]
    assert job["label_hypotheses"] == [None, "This text is about money or banks.", None]

    def done() -> dict[str, Any] | None:
        view = httpx.get(f"{zsc_url}/v1/jobs/{job['id']}", timeout=60).json()
        return view if view["state"] in ("succeeded", "failed") else None

    final = wait_for(done, 180, "the job to end")
    assert final["state"] == "succeeded", final
    assert_same(final["results"], expected)
    # A stride the window cannot hold is refused at submission, not when the job runs.
    refused = httpx.post(
        f"{zsc_url}/v1/jobs",
        json={"texts": TEXTS, "labels": LABELS, "long_text": "chunk", "chunk_stride": 5000},
        timeout=60,
    )
    assert refused.status_code == 422 and "chunk_stride" in refused.json()["error"]["message"]


def test_the_cli_reads_labels_from_a_file(
    zsc_url: str, tmp_path: Path, expected: list[dict[str, Any]]
) -> None:
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text(
        "sports\nfinance\tThis text is about money or banks.\n\n"
        + json.dumps({"label": "weather"})
        + "\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ZSC_URL", "ZSC_API_KEY")}
    args = ["--labels-file", str(labels_file), "--long-text", "chunk", "--chunk-stride", "4"]
    args += ["--chunk-aggregate", "mean", "--threshold", "0.3"]
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "--url", zsc_url, "classify", *TEXTS, *args],
        cwd=REPO,
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"({expected[0]['windows']} windows)" in done.stdout
    assert "predicted: " in done.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "--url", zsc_url, "classify", *TEXTS, *args]
        + ["--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert as_json.returncode == 0, as_json.stderr
    assert_same(json.loads(as_json.stdout)["results"], expected)
