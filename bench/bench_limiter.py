"""What the shared rate limiter costs: added latency per request and one actor's ceiling.

    .venv/bin/python bench/bench_limiter.py [--rounds 3] [--seconds 5]

Measures, each round:
- direct: sequential `RateLimitClient.admit` calls from the driver to the limiter actor (p50, p99);
- http: sequential `POST /v1/classify` to two copies of the app on the tiny model, one with the
  limit on (a rate high enough never to refuse) and one without, requests interleaved so both
  see the same noise; the difference of the two is what the limiter adds to a request;
- throughput: the acquisitions per second one limiter actor answers when callers in two other
  processes keep 64 calls each in flight (the actor, the callers and the driver share this
  machine's cores, so this is a floor for the actor on a core of its own);
- in-process: `RateLimiter.try_acquire` alone, without Ray, the arithmetic's own ceiling.
Prints the median of the rounds and writes every round to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from serve_app.app import build_app  # noqa: E402
from serve_app.config import AppConfig, RateLimitConfig  # noqa: E402
from serve_app.deployments.limiter import ACTOR_NAMESPACE, RateLimitClient, actor_name  # noqa: E402
from serve_app.core.ratelimit import RateLimiter  # noqa: E402
from serve_app.devtools.test_models import build_test_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# High enough that nothing is refused: the benchmark times the check, not the refusals.
NEVER_REFUSES = {"enabled": True, "default": {"rate": 1e9, "burst": 1e9}, "timeout_s": 5.0}
BODY = {"text": "The new phone's battery lasts two days.", "labels": ["tech", "sport"]}


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "n": len(ordered),
    }


async def direct_latency(client: RateLimitClient, calls: int) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.admit("bench-client", 1.0)
        samples.append(time.perf_counter() - started)
    return percentiles_ms(samples)


def http_latency(on_url: str, off_url: str, requests: int) -> dict[str, Any]:
    on, off = [], []
    with httpx.Client(timeout=60) as http:
        for _ in range(requests):
            for url, samples in ((on_url, on), (off_url, off)):
                started = time.perf_counter()
                response = http.post(f"{url}/v1/classify", json=BODY)
                samples.append(time.perf_counter() - started)
                response.raise_for_status()
    with_limit, without = percentiles_ms(on), percentiles_ms(off)
    return {
        "with_limit": with_limit,
        "without_limit": without,
        "added_p50_ms": with_limit["p50_ms"] - without["p50_ms"],
        "added_p99_ms": with_limit["p99_ms"] - without["p99_ms"],
    }


@ray.remote(num_cpus=0)
class Caller:
    """Keeps `in_flight` acquisitions outstanding against the limiter for `seconds`."""

    async def run(self, app_name: str, seconds: float, in_flight: int) -> int:
        actor = ray.get_actor(actor_name(app_name), namespace=ACTOR_NAMESPACE)
        deadline = time.monotonic() + seconds
        done = 0

        async def worker(i: int) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await actor.try_acquire.remote(f"client-{i}", 1.0)
                done += 1

        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        return done


def throughput(app_name: str, seconds: float, callers: int = 2, in_flight: int = 64) -> float:
    actors = [Caller.remote() for _ in range(callers)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    started = time.monotonic()
    done = sum(ray.get([a.run.remote(app_name, seconds, in_flight) for a in actors]))
    return done / (time.monotonic() - started)


def in_process_rate(calls: int = 200_000) -> float:
    limiter = RateLimiter(RateLimitConfig.model_validate(NEVER_REFUSES))
    started = time.perf_counter()
    for i in range(calls):
        limiter.try_acquire(f"client-{i % 1000}", 1.0)
    return calls / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(name: str, model: Path, port: int, rate_limit: dict[str, Any]) -> str:
    args = AppConfig.model_validate(
        {"model": str(model), "classifier": {"num_cpus": 0.5}, "ingress": {"num_cpus": 0.1},
         "rate_limit": rate_limit}
    )
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{port}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="Throughput run per round.")
    parser.add_argument("--direct-calls", type=int, default=2000)
    parser.add_argument("--http-requests", type=int, default=200, help="Per app, per round.")
    opts = parser.parse_args()

    ray.init(address="local", num_cpus=16, include_dashboard=False, namespace="zsc-bench",
             log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        model = build_test_model(Path(tempfile.mkdtemp()) / "tiny")
        on_url = deploy("limited", model, port, NEVER_REFUSES)
        off_url = deploy("unlimited", model, port, {"enabled": False})
        client = RateLimitClient(RateLimitConfig.model_validate(NEVER_REFUSES), app_name="bench")
        client.connect()
        rounds = []
        for _ in range(opts.rounds):
            rounds.append({
                "direct": asyncio.run(direct_latency(client, opts.direct_calls)),
                "http": http_latency(on_url, off_url, opts.http_requests),
                "throughput_per_s": throughput("bench", opts.seconds),
                "in_process_per_s": in_process_rate(),
            })
    finally:
        serve.shutdown()
        ray.shutdown()

    def median(path: tuple[str, ...]) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for part in path:
                value = value[part]
            values.append(value)
        return statistics.median(values)

    summary = {
        "direct admit p50 (ms)": median(("direct", "p50_ms")),
        "direct admit p99 (ms)": median(("direct", "p99_ms")),
        "HTTP with limit p50 (ms)": median(("http", "with_limit", "p50_ms")),
        "HTTP without limit p50 (ms)": median(("http", "without_limit", "p50_ms")),
        "HTTP added p50 (ms)": median(("http", "added_p50_ms")),
        "HTTP with limit p99 (ms)": median(("http", "with_limit", "p99_ms")),
        "HTTP without limit p99 (ms)": median(("http", "without_limit", "p99_ms")),
        "HTTP added p99 (ms)": median(("http", "added_p99_ms")),
        "one actor, acquisitions/s": median(("throughput_per_s",)),
        "in-process try_acquire/s": median(("in_process_per_s",)),
    }
    width = max(map(len, summary))
    print(f"\nrate limiter, median of {opts.rounds} rounds ({os.cpu_count()} CPUs)")
    for name, value in summary.items():
        print(f"  {name:<{width}}  {value:>12,.2f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_limiter-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = {"options": vars(opts), "summary": summary, "rounds": rounds}
    out.write_text(json.dumps(report, indent=2))
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
