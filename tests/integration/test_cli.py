"""The `zsc` CLI as a real subprocess against the live app on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from live import wait_for
from parity import assert_same_results
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
LABELS = "technology,sports,politics"
LIMITED_APP = "cli429"
TOPICS = ["music", "movies", "food", "science", "health", "travel", "business", "art"]


def zsc(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ZSC_URL", "ZSC_API_KEY")}
    env["COLUMNS"] = "120"  # rich wraps tables at 80 columns when stdout is not a terminal
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "--url", url, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def direct(url: str, texts: list[str], labels: str = LABELS) -> list[dict[str, Any]]:
    """What /v1/classify answers for `texts`, asked in slices under limits.max_texts."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(texts), 250):
        answer = httpx.post(
            f"{url}/v1/classify",
            json={"texts": texts[start : start + 250], "labels": labels},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        results.extend(answer.json()["results"])
    return results


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_row(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    rows = {line["row"]: line for line in lines}
    assert len(rows) == len(lines), "duplicate rows"
    return rows


def test_classify_prints_a_table(zsc_url: str) -> None:
    text = "The new phone's battery lasts two days."
    done = zsc(zsc_url, "classify", text, "-l", LABELS)
    [want] = direct(zsc_url, [text])
    lines = done.stdout.splitlines()
    assert text in done.stdout
    for label, score in zip(want["labels"], want["scores"]):
        row = next(line for line in lines if line.split()[:1] == [label])
        assert f"{score:.4f}" in row
    # Rows come in the service's order: best label first.
    positions = [done.stdout.index(f" {label} ") for label in want["labels"]]
    assert positions == sorted(positions)
    assert "random" in done.stderr


def test_classify_json_equals_the_service(zsc_url: str) -> None:
    texts = ["Stocks rallied after earnings.", "Heavy rain is expected tomorrow."]
    done = zsc(zsc_url, "classify", *texts, "-l", "finance, weather", "--multi-label", "--json")
    body = json.loads(done.stdout)
    want = httpx.post(
        f"{zsc_url}/v1/classify",
        json={"texts": texts, "labels": "finance, weather", "multi_label": True},
        timeout=30,
    ).json()
    assert_same_results(body["results"], want["results"])
    assert body["usage"] == want["usage"] and "random" in body["warning"]


def test_classify_error_is_one_readable_line(zsc_url: str) -> None:
    done = zsc(zsc_url, "classify", "a text", "-l", "x", "-t", "No slot.", check=False)
    assert done.returncode == 1
    assert "422" in done.stderr and "hypothesis_template must contain exactly one" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "texts.txt"
    path.write_text(
        "".join(
            f"Sentence {i} is about {TOPICS[i % len(TOPICS)]} and day {i % 31}.\n"
            for i in range(1000)
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def thousand_done(zsc_url: str, thousand: Path) -> list[dict[str, Any]]:
    """One complete batch run over the 1,000-row file, shared by the resume tests."""
    out = thousand.with_name("full.jsonl")
    done = zsc(zsc_url, "batch", str(thousand), "-l", LABELS, "-o", str(out), "--batch-size", "32")
    assert "wrote 1000 rows" in done.stderr
    return read_lines(out)


def test_batch_of_1000_equals_classify(
    zsc_url: str, thousand: Path, thousand_done: list[dict[str, Any]]
) -> None:
    rows = by_row(thousand_done)
    assert sorted(rows) == list(range(1000))
    texts = thousand.read_text(encoding="utf-8").splitlines()
    assert_same_results([rows[i]["result"] for i in range(1000)], direct(zsc_url, texts))


def test_batch_resumes_after_a_truncated_last_line(
    zsc_url: str, thousand: Path, thousand_done: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "partial.jsonl"
    kept = "".join(json.dumps(line) + "\n" for line in thousand_done[:400])
    half_line = json.dumps(thousand_done[400])[:37]  # what a kill in the middle of a write leaves
    out.write_text(kept + half_line, encoding="utf-8")

    done = zsc(zsc_url, "batch", str(thousand), "-l", LABELS, "-o", str(out), "--concurrency", "2")
    assert "wrote 600 rows" in done.stderr and "400 already there" in done.stderr
    rows = by_row(read_lines(out))
    assert sorted(rows) == list(range(1000))
    full = by_row(thousand_done)
    assert_same_results(
        [rows[i]["result"] for i in range(1000)], [full[i]["result"] for i in range(1000)]
    )


def test_batch_killed_midway_resumes_without_duplicates(
    zsc_url: str, thousand: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "serve_app.cli",
        "--url",
        zsc_url,
        "batch",
        str(thousand),
        "-l",
        LABELS,
        "-o",
        str(out),
        "--concurrency",
        "1",
        "--batch-size",
        "8",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 100 * 150:  # about 100 rows in
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    written_before = len(out.read_bytes().splitlines())
    assert 0 < written_before < 1000

    zsc(zsc_url, "batch", str(thousand), "-l", LABELS, "-o", str(out))
    assert sorted(by_row(read_lines(out))) == list(range(1000))


def test_batch_reads_csv_and_jsonl(zsc_url: str, tmp_path: Path) -> None:
    texts = ["Stocks rallied, after earnings.", 'A "quoted" line about art.', "Rain tomorrow."]
    csv_in = tmp_path / "in.csv"
    csv_in.write_text(
        'id,body\na1,"Stocks rallied, after earnings."\na2,"A ""quoted"" line about art."\n'
        'a3,""\na4,Rain tomorrow.\n',
        encoding="utf-8",
    )
    jsonl_in = tmp_path / "in.jsonl"
    jsonl_in.write_text(
        "".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts[:2]))
        + "\n"  # a blank line is skipped, but counted, so row numbers stay line numbers
        + json.dumps({"id": 9, "body": texts[2]})
        + "\n"
        + "{not json\n",
        encoding="utf-8",
    )
    want = direct(zsc_url, texts)

    def batch(source: Path) -> tuple[subprocess.CompletedProcess[str], dict[int, dict[str, Any]]]:
        out = tmp_path / f"{source.suffix[1:]}.out.jsonl"
        args = ["batch", str(source), "-l", LABELS, "-o", str(out), "--text-field", "body"]
        done = zsc(zsc_url, *args, check=False)
        return done, by_row(read_lines(out))

    done, rows = batch(csv_in)
    assert done.returncode == 1 and "1 error" in done.stderr  # the empty a3 row
    assert [rows[i].get("id") for i in range(4)] == ["a1", "a2", "a3", "a4"]
    assert rows[2]["error"]["type"] == "invalid_input"
    assert_same_results([rows[i]["result"] for i in (0, 1, 3)], want)

    done, rows = batch(jsonl_in)
    assert done.returncode == 1
    assert sorted(rows) == [0, 1, 3, 4] and rows[4]["error"]["type"] == "invalid_input"
    assert [rows[i]["id"] for i in (0, 1, 3)] == [0, 1, 9]
    assert_same_results([rows[i]["result"] for i in (0, 1, 3)], want)


def test_batch_stops_before_writing_when_the_labels_are_wrong(
    zsc_url: str, thousand: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never.jsonl"
    done = zsc(zsc_url, "batch", str(thousand), "-l", " , ", "-o", str(out), check=False)
    assert done.returncode == 1 and "labels is empty" in done.stderr
    assert not out.exists() or out.read_text() == ""


RATE, BURST = 40.0, 20.0  # pairs per second; the bucket's size
REFUSED_METRIC = "ray_zsc_ratelimit_refused_cost_total"


@pytest.fixture(scope="module")
def limited_url(deploy_app) -> str:
    """An app whose one bucket (per client address) holds 20 pairs and refills 40 per second."""
    return deploy_app(
        LIMITED_APP,
        rate_limit={"enabled": True, "default": {"rate": RATE, "burst": BURST}, "timeout_s": 5.0},
    )


def refused_cost(app: str) -> float:
    """The cost the rate limiter refused with a 429 on `app` (all clients), as this Ray node's
    Prometheus endpoint serves it: what an operator's dashboard would show."""
    [node] = [n for n in ray.nodes() if n["Alive"]]
    address = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    text = httpx.get(address, timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == REFUSED_METRIC and sample.labels.get("application") == app
    )


def test_batch_waits_out_429s(limited_url: str, tmp_path: Path) -> None:
    assert refused_cost(LIMITED_APP) == 0  # nobody has used this app yet
    rows, batch_size, labels = 60, 5, "a,b"
    source = tmp_path / "sixty.txt"
    source.write_text("".join(f"Row {i} about {TOPICS[i % 8]}.\n" for i in range(rows)))
    out = tmp_path / "limited.jsonl"
    started = time.monotonic()
    # Four requests of 10 pairs at once against a bucket of 20: some must be refused.
    done = zsc(
        limited_url, "batch", str(source), "-l", labels, "-o", str(out),
        "--batch-size", str(batch_size),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    # Exit code 0 (zsc() checks it), every row written with its result, none with an error...
    assert f"wrote {rows} rows" in done.stderr, done.stderr
    lines = read_lines(out)
    assert sorted(by_row(lines)) == list(range(rows))
    assert not [line for line in lines if "error" in line]
    # ...although the service refused some of its requests with a 429: the CLI waited them out.
    refused = wait_for(lambda: refused_cost(LIMITED_APP), 90, "the 429s to reach the metrics")
    assert refused >= batch_size * 2, refused
    # And it could not have gone faster than the bucket lets: burst, then the refill rate.
    pairs = (rows + 1) * 2  # with the preflight
    assert elapsed >= (pairs - BURST) / RATE, elapsed


def test_job_submit_status_wait(zsc_url: str, tmp_path: Path) -> None:
    texts = [f"Job text {i} about {TOPICS[i % len(TOPICS)]}." for i in range(40)]
    source = tmp_path / "job.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")

    job_id = zsc(zsc_url, "job", "submit", str(source), "-l", LABELS).stdout.strip()
    assert job_id
    assert zsc(zsc_url, "job", "status", job_id).stdout.startswith(f"job {job_id}: ")

    out = tmp_path / "job.jsonl"
    done = zsc(zsc_url, "job", "wait", job_id, "-o", str(out), "--page-size", "15")  # 3 pages
    assert f"job {job_id}: succeeded, 40/40 texts" in done.stderr
    rows = by_row(read_lines(out))
    assert sorted(rows) == list(range(len(texts)))
    assert_same_results([rows[i]["result"] for i in range(len(texts))], direct(zsc_url, texts))
    status = json.loads(zsc(zsc_url, "job", "status", job_id, "--json").stdout)
    assert (status["id"], status["state"]) == (job_id, "succeeded")
