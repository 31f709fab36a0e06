"""`zsc bulk` on real Ray: the CLI in a subprocess, connected (`--address`) to the session's Ray
or to a two-node cluster of its own, scoring the tiny test model.

Every row's labels and scores equal `/v1/classify` on the same model to 1e-6, and
`transformers`' pipeline on a sample to 1e-5. For the first, both sides run each pair in a
forward of its own (`forward_tokens` 16, an app of this module's own): fp32 results depend on
the padded shape of the sub-batch a pair lands in (~2e-6 here), and the two paths batch
differently (tests/test_bulk_inputs.py compares the default layout with the pipeline); unreadable rows go to the errors
files with their ids (exit 2); an interrupted run (SIGINT, then SIGKILL) resumes into the same
OUTPUT and ends with every id exactly once; on two nodes the actor pool runs on both.

A bulk run's actor holds one core: the references (the service, the pipeline) are computed
while it runs, on the other, and the JSONL and CSV runs go at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from live import wait_for
from ray_cluster import Cluster, own_cluster

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
LABELS = ["sports", "weather", "finance"]
WORDS = (
    "the match ended in a draw after rain all week while stocks fell and the new phone's "
    "battery lasts two days so the central bank raised rates"
).split()
CLI = "from serve_app.cli import main; main()"
# What a terminal's Ctrl-C meets: Python's own SIGINT handler. A suite started in the background
# by a non-interactive shell (`make test &`) runs with SIGINT ignored, which children inherit and
# Python then keeps, so the interrupted run restores the handler before the CLI starts.
CLI_WITH_CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + CLI
RUN_TIMEOUT_S = 300
SUMMARY = re.compile(
    r"done: (\d+) rows, (\d+) skipped \(already in OUTPUT\), (\d+) scored, (\d+) errors"
)


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    """Mixed lengths, some past the tiny model's 64-token window."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 70))) for _ in range(n)]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def bulk_command(*args: str, cli: str = CLI) -> list[str]:
    return [sys.executable, "-c", cli, "bulk", *args]


def start_bulk(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        bulk_command(*args), env=env or cli_env(), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(
    proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@contextlib.contextmanager
def running(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Work done while runs go on (they use one core, the service or the pipeline the other);
    a failure there kills them."""
    try:
        yield
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.communicate()
        raise


def run_bulk(
    *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return finish(start_bulk(*args, env=env), timeout)


def summary(stderr: str) -> dict[str, int]:
    match = SUMMARY.search(stderr)
    assert match, stderr
    rows, skipped, scored, errors = map(int, match.groups())
    return {"rows": rows, "skipped": skipped, "scored": scored, "errors": errors}


def read_output(out: Path, id_column: str) -> list[dict[str, Any]]:
    """Every row of every part (Parquet or JSONL)."""
    rows: list[dict[str, Any]] = []
    for part in sorted(out.glob("part-*")):
        if part.suffix == ".parquet":
            rows += pq.read_table(part).to_pylist()
        else:
            rows += [json.loads(line) for line in part.read_text().splitlines()]
    return rows


def read_errors(out: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for part in sorted((out / "_errors").glob("part-*.jsonl"))
        for line in part.read_text().splitlines()
    ]


Answer = tuple[dict[str, Any], bool]


def classify_http(url: str, texts: dict[Any, str]) -> dict[Any, Answer]:
    """(result, truncated) of each id's text from /v1/classify, 200 texts a request."""
    ids = list(texts)
    answers: dict[Any, Answer] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            response = client.post(
                "/v1/classify", json={"texts": [texts[i] for i in chunk], "labels": LABELS}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            cut = set(body.get("truncated") or [])
            answers.update(
                (i, (r, n in cut)) for n, (i, r) in enumerate(zip(chunk, body["results"]))
            )
    return answers


def assert_equal_http(rows: list[dict[str, Any]], answers: dict[Any, Answer], key: str) -> None:
    assert len(rows) == len(answers)
    for row in rows:
        want, truncated = answers[row[key]]
        assert row["labels"] == want["labels"], (row, want)
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-6), (row, want)
        assert row["truncated"] == truncated, row


@pytest.fixture(scope="module")
def ray_address(serve_instance: str) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


# A pair longer than 8 tokens (every pair here) fills a 16-token sub-batch alone.
ONE_PAIR_FORWARDS = ["--forward-tokens", "16"]


@pytest.fixture(scope="module")
def ref_url(deploy_app) -> str:
    """The tiny model served with one pair per forward, like the bulk runs compared to it."""
    return deploy_app("bulkref", forward_tokens=16)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


def test_parquet_rows_equal_the_service_and_the_pipeline(
    tmp_path: Path, tiny_model_dir: Path, ray_address: str, ref_url: str, reference
) -> None:
    texts = mixed_texts(3000)
    ids = [f"doc-{i}" for i in range(len(texts))]
    text_of = dict(zip(ids, texts))
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc": ids, "body": texts}), source, row_group_size=700)
    out = tmp_path / "out"
    run = start_bulk(
        str(source), str(out), "--labels", ",".join(LABELS), "--text-column", "body",
        "--id-column", "doc", "--model", str(tiny_model_dir), "--address", ray_address,
        "--actors", "1", "--batch-rows", "500", *ONE_PAIR_FORWARDS,
    )  # fmt: skip
    with running(run):
        answers = classify_http(ref_url, text_of)
        sample = random.Random(1).sample(ids, 25)
        pipeline_says = {i: reference(text_of[i], candidate_labels=LABELS) for i in sample}
    done = finish(run)
    assert done.returncode == 0, done.stderr
    assert summary(done.stderr) == {"rows": 3000, "skipped": 0, "scored": 3000, "errors": 0}
    rows = read_output(out, "doc")
    assert sorted(r["doc"] for r in rows) == sorted(ids)  # each id exactly once
    assert set(rows[0]) == {"doc", "body", "labels", "scores", "truncated"}
    assert all(r["body"] == text_of[r["doc"]] for r in rows)
    assert any(r["truncated"] for r in rows) and not all(r["truncated"] for r in rows)
    assert_equal_http(rows, answers, "doc")
    row_of = {r["doc"]: r for r in rows}
    for i, want in pipeline_says.items():
        assert row_of[i]["labels"] == want["labels"]
        assert row_of[i]["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_jsonl_and_csv_inputs_and_unreadable_rows(
    tmp_path: Path, tiny_model_dir: Path, ray_address: str, ref_url: str
) -> None:
    texts = mixed_texts(300, seed=2)
    # JSONL, numbered rows: a null text, a number, a line that is not JSON.
    lines = [json.dumps({"text": t}) for t in texts]
    lines[10] = json.dumps({"text": None})
    lines[20] = json.dumps({"text": 42})
    lines[30] = "{not json"
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    out_j = tmp_path / "out-jsonl"
    # CSV, ids of its own, no text in the output; an empty text is an error row.
    csv_texts = mixed_texts(200, seed=3)
    csv_texts[5] = ""
    ids = list(range(1000, 1200))
    source = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"id": ids, "text": csv_texts}), source)
    out_c = tmp_path / "out-csv"
    common = ["--labels", ",".join(LABELS), "--model", str(tiny_model_dir),
              "--address", ray_address, "--actors", "1", "--batch-rows", "100", *ONE_PAIR_FORWARDS]  # fmt: skip
    # Both runs at once (two drivers on one Ray), the service answering beside them.
    run_j = start_bulk(str(jsonl), str(out_j), "--format", "jsonl", *common)
    run_c = start_bulk(str(source), str(out_c), "--id-column", "id", "--no-text", *common)
    with running(run_j, run_c):
        want_j = [i for i in range(300) if i not in (10, 20, 30)]
        answers_j = classify_http(ref_url, {i: texts[i] for i in want_j})
        want_c = [i for i in ids if i != 1005]
        answers_c = classify_http(ref_url, {i: t for i, t in zip(ids, csv_texts) if i != 1005})

    done = finish(run_j)
    assert done.returncode == 2, done.stderr
    assert summary(done.stderr) == {"rows": 300, "skipped": 0, "scored": 297, "errors": 3}
    assert "3 rows could not be read" in done.stderr and "_errors" in done.stderr
    errors = sorted(read_errors(out_j), key=lambda e: e["row"])
    assert errors == [
        {"row": 10, "error": "text is null"},
        {"row": 20, "error": "text is a int, not a string"},
        {"row": 30, "error": "line 31 is not JSON"},
    ]
    rows = read_output(out_j, "row")
    assert sorted(r["row"] for r in rows) == want_j
    assert_equal_http(rows, answers_j, "row")

    done = finish(run_c)
    assert done.returncode == 2, done.stderr
    assert read_errors(out_c) == [{"id": 1005, "error": "text is empty"}]
    rows = read_output(out_c, "id")
    assert set(rows[0]) == {"id", "labels", "scores", "truncated"}
    assert sorted(r["id"] for r in rows) == want_c
    assert_equal_http(rows, answers_c, "id")
    # A rerun finds everything done (the error row included) and scores nothing.
    again = run_bulk(str(source), str(out_c), "--id-column", "id", "--no-text", *common)
    assert summary(again.stderr) == {"rows": 200, "skipped": 200, "scored": 0, "errors": 0}


def _interrupt_when(
    proc: subprocess.Popen[str], out: Path, parts: int, sig: int, timeout: float = 240
) -> None:
    def enough() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before it was interrupted:\n{proc.stderr.read() if proc.stderr else ''}"
            )
        return len(list(out.glob("part-*.parquet"))) >= parts

    wait_for(enough, timeout, f"{parts} parts", 0.2)
    proc.send_signal(sig)


def test_an_interrupted_run_resumes_with_every_id_once(
    tmp_path: Path, tiny_model_dir: Path, ray_address: str
) -> None:
    # 60 parts (~0.1 s each here, after a start-up of ~10 s): polled every 0.2 s, a run is
    # stopped a third and two thirds in with seconds to spare.
    rows, batch = 600, 10
    third_in, two_thirds_in = rows // batch // 3, 2 * rows // batch // 3
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": mixed_texts(rows, seed=4)}), source)
    out = tmp_path / "out"
    args = bulk_command(
        str(source), str(out), "--labels", "a,b,c,d", "--model", str(tiny_model_dir),
        "--address", ray_address, "--actors", "1", "--batch-rows", str(batch),
        cli=CLI_WITH_CTRL_C,
    )  # fmt: skip

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            args, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    first = start()
    _interrupt_when(first, out, third_in, signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130 and "rerun the same command to resume" in stderr, stderr

    second = start()
    _interrupt_when(second, out, two_thirds_in, signal.SIGKILL)
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL

    third = start()
    _, stderr = third.communicate(timeout=RUN_TIMEOUT_S)
    assert third.returncode == 0, stderr
    counts = summary(stderr)
    assert counts["rows"] == rows and counts["errors"] == 0
    assert counts["skipped"] >= two_thirds_in * batch and counts["scored"] < rows, counts
    assert counts["skipped"] + counts["scored"] == rows, counts
    written = read_output(out, "row")
    assert sorted(r["row"] for r in written) == list(range(rows))  # each id exactly once
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with own_cluster(tmp_path_factory) as cluster:
        cluster.start_worker("w1")
        yield cluster


def test_the_actor_pool_runs_on_both_nodes(
    two_nodes: Cluster, tmp_path: Path, tiny_model_dir: Path
) -> None:
    cluster = two_nodes
    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    assert len(nodes) == 2
    # Enough rows that the run outlasts the read tasks which hold a CPU while the pool starts.
    texts = mixed_texts(2400, seed=5)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    out = tmp_path / "out"
    # Two CPUs per actor on nodes of two CPUs each: one actor per node.
    done = run_bulk(
        str(source), str(out), "--labels", ",".join(LABELS), "--model", str(tiny_model_dir),
        "--address", cluster.gcs_address, "--num-cpus", "2", "--batch-rows", "40",
        env=cluster.env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert summary(done.stderr)["scored"] == len(texts)
    assert sorted(r["row"] for r in read_output(out, "row")) == list(range(len(texts)))
    actors = cluster._get("/api/v0/actors?limit=1000&detail=true")["data"]["result"]["result"]
    # Ray Data's pool actors are `_MapWorker`s; this pipeline's only actor pool is the model's.
    pool = [a for a in actors if "MapWorker" in (a.get("class_name") or "")]
    assert {a["node_id"] for a in pool} == nodes, [
        (a.get("class_name"), a.get("repr_name"), a["node_id"]) for a in actors
    ]
