"""What the shared rate limiter costs and carries: single calls against coalesced, sharded calls.

    .venv/bin/python -m bench.bench_limiter [--rounds 3] [--seconds 5] [--out PATH]

Measures, each round, with the same callers (two Ray actors in their own processes, each keeping
64 acquisitions in flight for 64 client keys):
- single: one limiter actor call per acquisition (`try_acquire_many` of one), the path every
  admission took before coalescing;
- coalesced, 1 and 3 shards: `RateLimitClient.admit`, which queues the admissions of one process
  per shard while a call to it is in flight and sends them as one call; with the admissions each
  call carried (from the shards' own counters). The actors, the callers and the driver share
  this machine's cores, so these are floors for actors on cores of their own;
- lone admissions: sequential `admit` against a bare actor call of one, p50/p99, so a window
  that delayed a lone request would show;
- http: sequential `POST /v1/classify` to two copies of the app on the tiny model, one with the
  limit on (a rate high enough never to refuse) and one without, interleaved so both see the
  same noise; the difference is what the limiter adds to a request at light load;
- in-process: `RateLimiter.try_acquire` and `try_acquire_many` alone, the arithmetic's ceiling.
Prints the median of the rounds; writes the summary (`single_acquisitions_per_s`,
`scaled_acquisitions_per_s` = the best coalesced figure, ...) and every round as JSON to `--out`
(default bench/results/bench_limiter-<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from bench.common import loadavg
from serve_app.app import build_app
from serve_app.config import AppConfig, RateLimitConfig
from serve_app.core.ratelimit import RateLimiter
from serve_app.deployments.limiter import (
    ACTOR_NAMESPACE,
    RateLimitClient,
    actor_name,
    remove_limiters,
)
from serve_app.devtools.ports import free_port
from serve_app.devtools.test_models import build_test_model

RESULTS = Path(__file__).parent / "results"
# High enough that nothing is refused: the benchmark times the check, not the refusals.
NEVER_REFUSES: dict[str, Any] = {
    "enabled": True,
    "default": {"rate": 1e9, "burst": 1e9},
    "timeout_s": 5.0,
}
BODY = {"text": "The new phone's battery lasts two days.", "labels": ["tech", "sport"]}
SHARD_COUNTS = (1, 3)
CALLERS, IN_FLIGHT = 2, 64


def config(shards: int = 1) -> RateLimitConfig:
    return RateLimitConfig.model_validate({**NEVER_REFUSES, "shards": shards})


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "n": len(ordered),
    }


async def lone_latency(client: RateLimitClient, app_name: str, calls: int) -> dict[str, Any]:
    """Sequential admissions through the client against bare actor calls, interleaved."""
    actor = ray.get_actor(actor_name(app_name), namespace=ACTOR_NAMESPACE)
    through_client: list[float] = []
    bare: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.admit("bench-client", 1.0)
        through_client.append(time.perf_counter() - started)
        started = time.perf_counter()
        await actor.try_acquire_many.remote([("bench-client", 1.0)])
        bare.append(time.perf_counter() - started)
    return added_latency(("admit", through_client), ("bare_call", bare))


def added_latency(
    measured: tuple[str, list[float]], baseline: tuple[str, list[float]]
) -> dict[str, Any]:
    """Both sides' percentiles under their names, and what the measured side adds at p50, p99."""
    (name, samples), (base_name, base_samples) = measured, baseline
    ms, base_ms = percentiles_ms(samples), percentiles_ms(base_samples)
    return {
        name: ms,
        base_name: base_ms,
        "added_p50_ms": ms["p50_ms"] - base_ms["p50_ms"],
        "added_p99_ms": ms["p99_ms"] - base_ms["p99_ms"],
    }


def http_latency(on_url: str, off_url: str, requests: int) -> dict[str, Any]:
    on: list[float] = []
    off: list[float] = []
    with httpx.Client(timeout=60) as http:
        for _ in range(requests):
            for url, samples in ((on_url, on), (off_url, off)):
                started = time.perf_counter()
                response = http.post(f"{url}/v1/classify", json=BODY)
                samples.append(time.perf_counter() - started)
                response.raise_for_status()
    return added_latency(("with_limit", on), ("without_limit", off))


@ray.remote(num_cpus=0)
class Caller:
    """Keeps `in_flight` acquisitions outstanding for `seconds`, one key per worker."""

    async def run(self, app_name: str, shards: int | None, seconds: float, in_flight: int) -> int:
        """shards=None: one bare actor call per acquisition; else through a coalescing client."""
        if shards is None:
            actor = ray.get_actor(actor_name(app_name), namespace=ACTOR_NAMESPACE)

            async def acquire(key: str) -> None:
                await actor.try_acquire_many.remote([(key, 1.0)])
        else:
            client = RateLimitClient(config(shards), app_name=app_name)
            assert client.connect()

            async def acquire(key: str) -> None:
                assert await client.admit(key, 1.0) is not None  # never fails open here

        deadline = time.monotonic() + seconds
        done = 0

        async def worker(key: str) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await acquire(key)
                done += 1

        await asyncio.gather(*(worker(f"client-{i}") for i in range(in_flight)))
        return done


def shard_stats(app_name: str, shards: int) -> tuple[int, int]:
    """(calls, admissions) answered so far by every shard of an app."""
    stats = ray.get(
        [
            ray.get_actor(actor_name(app_name, i), namespace=ACTOR_NAMESPACE).stats.remote()
            for i in range(shards)
        ]
    )
    return sum(s["calls"] for s in stats), sum(s["admissions"] for s in stats)


def throughput(
    callers: list[Any], app_name: str, shards: int | None, seconds: float
) -> dict[str, float]:
    counted_shards = shards or 1
    calls_before, admissions_before = shard_stats(app_name, counted_shards)
    started = time.monotonic()
    done = sum(ray.get([c.run.remote(app_name, shards, seconds, IN_FLIGHT) for c in callers]))
    elapsed = time.monotonic() - started
    calls, admissions = shard_stats(app_name, counted_shards)
    return {
        "acquisitions_per_s": done / elapsed,
        "admissions_per_call": (admissions - admissions_before) / max(1, calls - calls_before),
    }


def in_process_rates(calls: int = 200_000, batch: int = 64) -> dict[str, float]:
    limiter = RateLimiter(config())
    started = time.perf_counter()
    for i in range(calls):
        limiter.try_acquire(f"client-{i % 1000}", 1.0)
    single = calls / (time.perf_counter() - started)
    batches = [[(f"client-{(j + k) % 1000}", 1.0) for k in range(batch)] for j in range(1000)]
    started = time.perf_counter()
    for j in range(calls // batch):
        limiter.try_acquire_many(batches[j % len(batches)])
    many = (calls // batch) * batch / (time.perf_counter() - started)
    return {"try_acquire_per_s": single, "try_acquire_many_per_s": many}


def deploy(name: str, model: Path, port: int, rate_limit: dict[str, Any]) -> str:
    args = AppConfig.model_validate(
        {
            "model": str(model),
            "classifier": {"num_cpus": 0.5},
            "ingress": {"num_cpus": 0.1},
            "rate_limit": rate_limit,
        }
    )
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{port}/{name}"


def one_round(
    opts: argparse.Namespace, callers: list[Any], client: RateLimitClient, urls: tuple[str, str]
) -> dict[str, Any]:
    coalesced = {
        str(shards): throughput(callers, f"bench-{shards}", shards, opts.seconds)
        for shards in SHARD_COUNTS
    }
    return {
        "single": throughput(callers, "bench-single", None, opts.seconds),
        "coalesced": coalesced,
        "lone": asyncio.run(lone_latency(client, "bench-1", opts.lone_calls)),
        "http": http_latency(*urls, opts.http_requests),
        "in_process": in_process_rates(),
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, float]:
    def median(*path: str) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for part in path:
                value = value[part]
            values.append(value)
        return float(statistics.median(values))

    summary = {
        "single_acquisitions_per_s": median("single", "acquisitions_per_s"),
        **{
            f"coalesced_shards_{s}_acquisitions_per_s": median(
                "coalesced", str(s), "acquisitions_per_s"
            )
            for s in SHARD_COUNTS
        },
        **{
            f"coalesced_shards_{s}_admissions_per_call": median(
                "coalesced", str(s), "admissions_per_call"
            )
            for s in SHARD_COUNTS
        },
        "lone_admit_p50_ms": median("lone", "admit", "p50_ms"),
        "lone_admit_p99_ms": median("lone", "admit", "p99_ms"),
        "lone_bare_call_p50_ms": median("lone", "bare_call", "p50_ms"),
        "lone_bare_call_p99_ms": median("lone", "bare_call", "p99_ms"),
        "lone_added_p50_ms": median("lone", "added_p50_ms"),
        "lone_added_p99_ms": median("lone", "added_p99_ms"),
        "http_with_limit_p50_ms": median("http", "with_limit", "p50_ms"),
        "http_without_limit_p50_ms": median("http", "without_limit", "p50_ms"),
        "http_added_p50_ms": median("http", "added_p50_ms"),
        "http_with_limit_p99_ms": median("http", "with_limit", "p99_ms"),
        "http_without_limit_p99_ms": median("http", "without_limit", "p99_ms"),
        "http_added_p99_ms": median("http", "added_p99_ms"),
        "in_process_try_acquire_per_s": median("in_process", "try_acquire_per_s"),
        "in_process_try_acquire_many_per_s": median("in_process", "try_acquire_many_per_s"),
    }
    summary["scaled_acquisitions_per_s"] = max(
        summary[f"coalesced_shards_{s}_acquisitions_per_s"] for s in SHARD_COUNTS
    )
    summary["speedup"] = summary["scaled_acquisitions_per_s"] / summary["single_acquisitions_per_s"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="Each throughput run.")
    parser.add_argument("--lone-calls", type=int, default=1000)
    parser.add_argument("--http-requests", type=int, default=200, help="Per app, per round.")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write.")
    opts = parser.parse_args()

    ray.init(
        address="local",
        num_cpus=16,
        include_dashboard=False,
        namespace="zsc-bench",
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = ["bench-single", *(f"bench-{s}" for s in SHARD_COUNTS)]
    try:
        model = build_test_model(Path(tempfile.mkdtemp()) / "tiny")
        urls = (
            deploy("limited", model, port, NEVER_REFUSES),
            deploy("unlimited", model, port, {"enabled": False}),
        )
        # Create every limiter up front, so no run pays for starting an actor.
        for app, shards in zip(apps, (1, *SHARD_COUNTS)):
            assert RateLimitClient(config(shards), app_name=app).connect()
        client = RateLimitClient(config(), app_name="bench-1")
        assert client.connect()
        callers = [Caller.remote() for _ in range(CALLERS)]
        ray.get([c.__ray_ready__.remote() for c in callers])
        rounds = [one_round(opts, callers, client, urls) for _ in range(opts.rounds)]
    finally:
        for app in (*apps, "limited"):
            remove_limiters(app)
        serve.shutdown()
        ray.shutdown()

    summary = summarise(rounds)
    width = max(map(len, summary))
    print(f"\nrate limiter, median of {opts.rounds} rounds ({os.cpu_count()} CPUs)")
    for name, value in summary.items():
        print(f"  {name:<{width}}  {value:>12,.2f}")

    out = opts.out or RESULTS / f"bench_limiter-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **summary,
        "command": " ".join(["python -m bench.bench_limiter", *sys.argv[1:]]),
        "loadavg": loadavg(),
        "options": {k: str(v) for k, v in vars(opts).items()},
        "rounds": rounds,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
