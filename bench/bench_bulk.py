"""`zsc bulk` against the raw length-sorted forward (c) and the jobs API, in one run.

    .venv/bin/python -m bench bulk [--rows 512] [--labels 2] [--batch-size 32]
                                   [--backend torch|int8] [--out DIR]
    zsc bench bulk [--rows N] [--out DIR]

The issue asks for 20,000 texts; on this 2-core machine (~19 fp32 pairs/s idle, 3-5 when shared)
that is 40,000 pairs, about 35 minutes per contender in fp32, so the default is 512 texts x 2
labels (one of `zsc bulk`'s default 256-row batches per core: a whole batch for each actor),
about 3 minutes for all three on an idle machine. The full size, `--rows 20000 --backend int8`
(every contender on the int8 backend, one pair per forward, ~85 pairs/s here), takes about 26
minutes; it writes bulk-20000-int8.json, so the default run's bulk.json stays beside it.

On the full-size random model (82.1M parameters; built once into .zsc/bench-model), over the
seeded mixed-length texts of the service benchmark (10-200 tokens, bench/common.py), every text with the same `--labels` labels:

  (c)    the raw forward of bench/common.py: every pair length-sorted, in
         batches of `--batch-size`, on the service's default engine layout, in this process.
         It runs in two halves, one before and one after the others, so drift in the machine's
         load hits (c) as it hits them.
  bulk   `zsc bulk` as users run it: the CLI in a subprocess, on a Parquet file of the texts,
         default pool (one actor per CPU), connected to this run's local Ray (`--address`), so
         Ray's start is not counted but the actors' start and model load are. Its rows/s is
         the one its summary line prints; the CLI's whole wall time is recorded too.
  jobs   the jobs API: the app served with its default layout (a SQLite store), one job of
         every text submitted over HTTP and polled until it ends.

Ray is started with as many CPUs as the machine has cores. The machine may be shared: compare
the ratios of one run. Each contender's CPU share is the whole machine's busy time over its
wall time and all cores (the actor pool lives outside this process's tree), so it means
something only on an otherwise idle machine: the load average is recorded. Writes bulk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    LABEL_COUNTS,
    add_common_args,
    describe_workload,
    encode_items,
    ensure_model,
    free_port,
    hf_tokenizer,
    loadavg,
    log,
    machine_cpu_seconds,
    make_items,
    now,
    raw_forward,
    use_threads,
)

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(
    r"done: (\d+) rows, (\d+) skipped .*?, (\d+) scored, (\d+) errors, in ([\d.]+) s"
)
JOBS_APP = "zsc-bulk-bench"
DEFAULT_ROWS, DEFAULT_BACKEND = 512, "torch"  # the run that writes bulk.json


# Ray starts its workers at nice 15 by default, below this driver where (c) runs: run
# everything at one priority (read at ray.init).
os.environ.setdefault("RAY_worker_niceness", "0")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help="Texts in the workload (20,000 x 2 labels: ~35 min per contender in fp32 on 2 cores).",
    )
    parser.add_argument(
        "--labels", type=int, choices=LABEL_COUNTS, default=2, help="Labels per text."
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="(c)'s batch size (the service bench's sweep)."
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "int8"),
        default=DEFAULT_BACKEND,
        help="The engine backend of all three contenders (int8: one pair per forward).",
    )
    add_common_args(parser, DEFAULT_OUT, "bulk.json (bulk-ROWS-BACKEND.json for other runs)")
    return parser.parse_args(argv)


def results_name(opts: argparse.Namespace) -> str:
    """bulk.json for the default run; other sizes and backends get their own file."""
    if (opts.rows, opts.backend) == (DEFAULT_ROWS, DEFAULT_BACKEND):
        return "bulk.json"
    return f"bulk-{opts.rows}-{opts.backend}.json"


def measure_c(engine: Any, pairs: Sequence[Any], batch_size: int) -> dict[str, float]:
    use_threads(engine)
    cpu = machine_cpu_seconds()
    wall, _, logits = raw_forward(engine, pairs, batch_size)
    return {
        "pairs": sum(map(len, pairs)),
        "wall_s": wall,
        "cpu_s": machine_cpu_seconds() - cpu,
        "logits": logits,  # type: ignore[dict-item]
    }


def measure_bulk(
    source: Path, out: Path, labels: Sequence[str], model_dir: Path, backend: str, address: str
) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "serve_app.cli", "bulk", str(source), str(out),
        "--labels", ",".join(labels), "--id-column", "id", "--no-text",
        "--model", str(model_dir), "--backend", backend, "--address", address,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cpu = machine_cpu_seconds()
    started = now()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = now() - started
    cpu = machine_cpu_seconds() - cpu
    match = SUMMARY.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"zsc bulk failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows, _, scored, errors, seconds = match.groups()
    return {
        "command": "zsc " + " ".join(command[3:]),
        "rows": int(rows),
        "scored": int(scored),
        "errors": int(errors),
        "run_s": float(seconds),  # the CLI's own timing: plan done -> last part written
        "cli_wall_s": wall,  # the whole command: imports, connecting to Ray, planning
        "cpu_s": cpu,
        "summary_line": match.group(0),
    }


def measure_jobs(
    texts: list[str], labels: Sequence[str], model_dir: Path, backend: str, tmp: Path
) -> dict[str, Any]:
    from ray import serve

    from serve_app.app import build_app
    from serve_app.client import ZeroShotClient

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    args = {
        "model": str(model_dir),
        "backend": backend,
        "jobs": {"store": f"sqlite:///{tmp / 'jobs.sqlite3'}"},
    }
    serve.run(build_app(args), name=JOBS_APP, route_prefix="/")
    try:
        with ZeroShotClient(url, timeout=600) as client:
            client.classify(texts[:1], list(labels))  # the app answers: it is up and warm
            cpu = machine_cpu_seconds()
            started = now()
            job = client.submit_job(texts, list(labels))
            ended = client.wait_job(
                job["id"], poll_interval_s=0.5, max_poll_interval_s=2.0, timeout_s=3600
            )
            wall = now() - started
            cpu = machine_cpu_seconds() - cpu
        results = ended.get("results") or []
        if ended["state"] != "succeeded" or len(results) != len(texts):
            raise RuntimeError(f"job ended {ended['state']} with {len(results)} results")
        return {"rows": len(texts), "wall_s": wall, "cpu_s": cpu, "results": results}
    finally:
        serve.delete(JOBS_APP)
        serve.shutdown()


def score_difference(
    bulk_out: Path, c_logits: list[np.ndarray], labels: Sequence[str], indices: Any
) -> float:
    """Largest |score| difference between bulk's rows and (c)'s logits (same model and backend)."""
    import pyarrow.parquet as pq

    from serve_app.core.nli import label_scores

    worst = 0.0
    for part in bulk_out.glob("part-*.parquet"):
        for row in pq.read_table(part).to_pylist():
            want = label_scores(c_logits[row["id"]], indices, False)
            got = dict(zip(row["labels"], row["scores"]))
            worst = max(worst, max(abs(got[label] - float(w)) for label, w in zip(labels, want)))
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    load_start = loadavg()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import torch

    from bench.common import label_sets
    from serve_app.config import ModelConfig
    from serve_app.engine.engine import Engine
    from serve_app.engine.threads import affinity_cpus

    cpus = affinity_cpus()
    model_dir = ensure_model(opts.model_dir.resolve())
    # (c) on the service's default layout (one thread per sub-batch, one sub-batch per core), as
    # bench/bench.py runs it.
    engine = Engine(ModelConfig(model=str(model_dir), backend=opts.backend), str(model_dir))
    labels = label_sets()[opts.labels]
    items = make_items(hf_tokenizer(model_dir), [opts.labels] * opts.rows, seed=opts.seed)
    pairs = encode_items(engine, items)
    texts = [item.text for item in items]
    use_threads(engine)
    engine.forward([p for ps in pairs[:4] for p in ps])  # first forwards are slow: not timed
    half = len(items) // 2
    report: dict[str, Any] = {
        "command": "python -m bench bulk " + " ".join(sys.argv[2:] if argv is None else argv),
        "workload": {**describe_workload(items, pairs), "labels": list(labels)},
        "c_batch_size": opts.batch_size,
        "backend": opts.backend,
    }
    log(f"{len(items)} texts, {report['workload']['pairs']} pairs, {cpus} cores")

    with tempfile.TemporaryDirectory(prefix="zsc-bulk-bench-") as tmp_name:
        tmp = Path(tmp_name)
        source, out = tmp / "texts.parquet", tmp / "out"
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)
        ray.init(
            address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
            namespace="zsc-bulk-bench",
        )  # fmt: skip
        try:
            address = ray.get_runtime_context().gcs_address
            log("(c) first half")
            c1 = measure_c(engine, pairs[:half], opts.batch_size)
            log(f"  {c1['pairs'] / c1['wall_s']:.2f} pairs/s; zsc bulk")
            bulk = measure_bulk(source, out, labels, model_dir, opts.backend, address)
            log(f"  {bulk['summary_line']}; jobs API")
            jobs = measure_jobs(texts, labels, model_dir, opts.backend, tmp)
            log(f"  {jobs['rows'] / jobs['wall_s']:.2f} rows/s; (c) second half")
            c2 = measure_c(engine, pairs[half:], opts.batch_size)
            log(f"  {c2['pairs'] / c2['wall_s']:.2f} pairs/s")
        finally:
            ray.shutdown()
        diff = score_difference(out, [*c1.pop("logits"), *c2.pop("logits")], labels, engine.indices)

    rows = len(items)
    c_wall = c1["wall_s"] + c2["wall_s"]
    c_rows_per_s = rows / c_wall
    bulk_rows_per_s = bulk["scored"] / bulk["run_s"]
    jobs.pop("results")
    jobs_rows_per_s = rows / jobs["wall_s"]

    def share(cpu_s: float, wall_s: float) -> float:
        return round(cpu_s / (wall_s * cpus), 3)

    report["results"] = {
        "c": {
            "name": f"(c) raw sorted forward, batch {opts.batch_size}, in two halves",
            "rows_per_s": round(c_rows_per_s, 3),
            "pairs_per_s": round(rows * opts.labels / c_wall, 3),
            "halves_pairs_per_s": [round(h["pairs"] / h["wall_s"], 3) for h in (c1, c2)],
            "wall_s": round(c_wall, 2),
            "cpu_share": share(c1["cpu_s"] + c2["cpu_s"], c_wall),
        },
        "bulk": {
            "name": "zsc bulk (CLI, default actor pool, local Ray)",
            "rows_per_s": round(bulk_rows_per_s, 3),
            "rows_per_s_cli_wall": round(bulk["scored"] / bulk["cli_wall_s"], 3),
            "run_s": bulk["run_s"],
            "cli_wall_s": round(bulk["cli_wall_s"], 2),
            "cpu_share": share(bulk["cpu_s"], bulk["cli_wall_s"]),
            "errors": bulk["errors"],
            "command": bulk["command"],
            "max_abs_score_diff_vs_c": diff,
        },
        "jobs": {
            "name": "jobs API (one job, default layout, SQLite store)",
            "rows_per_s": round(jobs_rows_per_s, 3),
            "wall_s": round(jobs["wall_s"], 2),
            "cpu_share": share(jobs["cpu_s"], jobs["wall_s"]),
        },
    }
    report["ratios"] = {
        "bulk_vs_c": round(bulk_rows_per_s / c_rows_per_s, 3),
        "bulk_cli_wall_vs_c": round(bulk["scored"] / bulk["cli_wall_s"] / c_rows_per_s, 3),
        "jobs_vs_c": round(jobs_rows_per_s / c_rows_per_s, 3),
        "bulk_vs_jobs": round(bulk_rows_per_s / jobs_rows_per_s, 3),
    }
    report["target_bulk_vs_c"] = {"min": 0.9, "met": report["ratios"]["bulk_vs_c"] >= 0.9}
    report["machine"] = {
        "cpus": cpus,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": sys.version.split()[0],
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
    }
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / results_name(opts)
    path.write_text(json.dumps(report, indent=2) + "\n")
    results = report["results"]
    print(f"{'':6} {'rows/s':>8} {'x (c)':>6} {'CPU share':>9}")
    for key in ("c", "bulk", "jobs"):
        r = results[key]
        print(
            f"{key:6} {r['rows_per_s']:8.2f} {r['rows_per_s'] / c_rows_per_s:6.2f} {r['cpu_share']:9.2f}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
