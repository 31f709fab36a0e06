"""Jobs throughput with 1 and 2 runners, on SQLite and on PostgreSQL, in one run.

    .venv/bin/python -m bench.bench_jobs [--rounds 3] [--jobs 12] [--texts 256] [--score-ms 25]
                                         [--out bench/results/jobs.json]

What it measures is the jobs machinery (claims, leases and their renewals, writes of results,
tenants in turn), not the model: each runner is its own process running the real
`JobScheduler` on the real store, and its scorer answers a chunk after a fixed `--score-ms`
(`asyncio.sleep`), as a Classifier pool with capacity to spare would. (With a model, even the
tiny one, two runners on this 2-core machine would measure CPU contention between them.)

Each round: a fresh store (a new SQLite file; a new database on a throwaway PostgreSQL server),
`--jobs` jobs of `--texts` texts from 3 tenants, submitted before the runners start; the clock
runs from the runners' start signal to the last job's end. Configurations are interleaved
round by round. Prints medians and writes every round as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from serve_app.config import JobsConfig
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification, TextResult
from serve_app.devtools.postgres import temporary_postgres
from serve_app.jobs.opening import open_store
from serve_app.jobs.scheduler import JobScheduler

CHUNK_TEXTS = 16
PARALLEL = 4
TENANTS = ("t0", "t1", "t2")
LABELS = ["sports", "politics", "technology"]


def runner(url: str, score_ms: float, ready: Any, start: Any, stop: Any) -> None:
    async def score(request: PreparedRequest) -> Classification:
        await asyncio.sleep(score_ms / 1000)
        return Classification(
            model="scripted",
            results=[TextResult(t, LABELS, [0.5, 0.3, 0.2]) for t in request.texts],
            pairs=len(request.texts) * len(LABELS),
        )

    async def main() -> None:
        store = open_store(url)
        config = JobsConfig(chunk_texts=CHUNK_TEXTS, max_parallel_chunks=PARALLEL, lease_s=20.0)
        scheduler = JobScheduler(store, config, score, is_transient=lambda exc: False)
        ready.set()
        await asyncio.to_thread(start.wait)
        loop = asyncio.create_task(scheduler.run())
        await asyncio.to_thread(stop.wait)
        loop.cancel()
        store.close()

    asyncio.run(main())


def one_round(url: str, runners: int, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url)
    ids = []
    for n in range(args.jobs):
        texts = [
            f"job {n} text {i}: the match and the vote and the phone" for i in range(args.texts)
        ]
        request = {
            "texts": texts,
            "labels": LABELS,
            "hypothesis_template": "{}",
            "multi_label": False,
        }
        job, _ = store.create_job(request, CHUNK_TEXTS, owner=TENANTS[n % len(TENANTS)])
        ids.append((job.id, TENANTS[n % len(TENANTS)]))
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(runners)]
    start, stop = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=runner, args=(url, args.score_ms, ready[i], start, stop))
        for i in range(runners)
    ]
    for p in procs:
        p.start()
    for event in ready:
        event.wait(120)
    t0 = time.perf_counter()
    start.set()
    while True:
        # One cheap query per poll, so the driver's polling is not a load of its own.
        with store._tx() as db:  # type: ignore[attr-defined]
            row = db.one("SELECT count(*) AS n FROM jobs WHERE state = 'succeeded'")
        if row is not None and row["n"] == len(ids):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    stop.set()
    for p in procs:
        p.join(30)
    store.close()
    chunks = args.jobs * -(-args.texts // CHUNK_TEXTS)
    return {
        "seconds": elapsed,
        "texts_per_s": args.jobs * args.texts / elapsed,
        "chunks_per_s": chunks / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--score-ms", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/jobs.json"))
    args = parser.parse_args()
    configs = [(store, n) for store in ("sqlite", "postgres") for n in (1, 2)]
    rounds: dict[str, list[dict[str, Any]]] = {f"{s}/{n}": [] for s, n in configs}
    with temporary_postgres() as server, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind, n in configs:
                if kind == "sqlite":
                    url = f"sqlite:///{Path(tmp) / f'{uuid.uuid4().hex}.sqlite3'}"
                else:
                    name = f"b_{uuid.uuid4().hex[:12]}"
                    with psycopg.connect(server, autocommit=True) as conn:
                        conn.execute(f"CREATE DATABASE {name}")
                    url = server.rsplit("/", 1)[0] + "/" + name
                result = one_round(url, n, args)
                rounds[f"{kind}/{n}"].append(result)
                print(f"round {r + 1} {kind:8} runners={n}: {result['texts_per_s']:8.0f} texts/s")
    ideal = PARALLEL * 1000 / args.score_ms * CHUNK_TEXTS  # texts/s of one runner, free store
    summary = {}
    for key, results in rounds.items():
        median = statistics.median(r["texts_per_s"] for r in results)
        summary[key] = {"median_texts_per_s": median, "of_ideal_one_runner": median / ideal}
    for kind in ("sqlite", "postgres"):
        one, two = summary[f"{kind}/1"], summary[f"{kind}/2"]
        two["vs_one_runner"] = two["median_texts_per_s"] / one["median_texts_per_s"]
    print(f"\n{'store':10} {'runners':>7} {'texts/s':>9} {'x 1 runner':>10} {'of ideal(1)':>11}")
    for key, row in summary.items():
        kind, n = key.split("/")
        print(
            f"{kind:10} {n:>7} {row['median_texts_per_s']:9.0f} "
            f"{row.get('vs_one_runner', 1.0):10.2f} {row['of_ideal_one_runner']:11.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "workload": {
                    "jobs": args.jobs,
                    "texts_per_job": args.texts,
                    "chunk_texts": CHUNK_TEXTS,
                    "max_parallel_chunks": PARALLEL,
                    "score_ms_per_chunk": args.score_ms,
                    "tenants": len(TENANTS),
                    "ideal_one_runner_texts_per_s": ideal,
                },
                "summary": summary,
                "rounds": rounds,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
