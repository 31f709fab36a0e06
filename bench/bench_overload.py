"""Overload against the default layout: what admitted and refused requests meet at 4x the load
the app sustains, against 0.8x.

    .venv/bin/python -m bench.bench_overload [--model DIR] [--seconds 30] [--out PATH]

Deploys `build_app` with the default configuration (one Classifier replica with `num_cpus:
auto`, `ingress.max_scoring_pairs`, `classifier.max_queued_requests` and `request_timeout_s` at
their defaults) on a fresh
local Ray, on the tiny random test model unless `--model` names another (the tiny model makes
the ingress and Serve's routing the bottleneck rather than the forward, which is the harder case
for shedding: each refusal costs nearly what an admission does). Then, in the same run:
1. sustainable: a closed loop of 32 clients for 10 s; its throughput is the sustainable rate R;
2. 0.8x: an open loop (requests sent at fixed intervals, whatever comes back) at 0.8 R;
3. 4x: an open loop at 4 R for `--seconds`.
The load generator (aiohttp, this process) shares the machine's cores with Ray. Writes, per
phase, admitted requests' p50/p99 latency, refused requests' median time to answer, and the
count of responses by status (and how many were not JSON), and what `GET /healthz` answered,
polled every 0.5 s meanwhile, to `--out`
(default bench/results/overload.json). Serve's proxy runs with `request_timeout_s` 10 s above the
app's, as docs/OPERATIONS.md advises.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

# 8 texts x 8 labels: 64 pairs, so the Classifier (not the ingress) is what saturates, as it is
# with the real model; `--light` sends 1 text x 4 labels, where the ingress saturates first.
HEAVY = {
    "texts": [f"Text {i}: the striker scored twice before half time." for i in range(8)],
    "labels": ["sports", "cooking", "politics", "weather", "music", "travel", "science", "art"],
}
LIGHT = {
    "texts": ["The striker scored twice before half time, and the crowd went wild."],
    "labels": ["sports", "cooking", "politics", "weather"],
}
BODY = HEAVY
# Answers still missing this long after the last request was sent are counted as "no answer".
DRAIN_S = 180.0
CLIENTS = 32


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[int, float, bool]:
    started = time.perf_counter()
    try:
        async with session.post(url, json=BODY) as response:
            await response.read()
            is_json = response.content_type == "application/json"
            return response.status, time.perf_counter() - started, is_json
    except aiohttp.ClientError:
        return -1, time.perf_counter() - started, False


def summarize(answers: list[tuple[int, float, bool]], seconds: float) -> dict[str, Any]:
    admitted = [t for status, t, _ in answers if status == 200]
    refused = [t for status, t, _ in answers if status in (503, 504)]
    return {
        "seconds": round(seconds, 2),
        "sent": len(answers),
        "admitted_per_s": round(len(admitted) / seconds, 1),
        "admitted_p50_s": percentile(admitted, 0.5),
        "admitted_p99_s": percentile(admitted, 0.99),
        "refused_median_s": statistics.median(refused) if refused else None,
        "refused_p90_s": percentile(refused, 0.9),
        "by_status": dict(Counter(str(status) for status, _, _ in answers)),
        "not_json": sum(1 for status, _, is_json in answers if status != 200 and not is_json),
    }


async def closed_loop(url: str, seconds: float) -> dict[str, Any]:
    answers: list[tuple[int, float, bool]] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while time.perf_counter() < deadline:
                answers.append(await _post(session, url))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return summarize(answers, time.perf_counter() - started)


async def poll_health(url: str, stop: asyncio.Event) -> dict[str, Any]:
    """GET /healthz every 0.5 s until `stop`: statuses and the slowest answer."""
    health_url = url.rsplit("/v1/", 1)[0] + "/healthz"
    statuses: Counter[str] = Counter()
    times: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with session.get(health_url) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses["-1"] += 1
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.5)
    return {
        "by_status": dict(statuses),
        "p50_s": percentile(times, 0.5),
        "max_s": max(times) if times else None,
    }


async def open_loop(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Send `rate` requests per second at fixed intervals for `seconds`, whatever comes back."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    stop = asyncio.Event()
    health = asyncio.create_task(poll_health(url, stop))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, url)))
        sent_s = time.perf_counter() - started
        done, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
        for task in pending:
            task.cancel()
    stop.set()
    result = summarize([task.result() for task in done], sent_s)
    result["healthz"] = await health
    result["offered_per_s"] = round(rate, 1)
    result["no_answer_within_drain"] = len(pending)
    return result


def deploy(model: Path, ingress_max_queued: int, max_scoring_pairs: int | None) -> str:
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppConfig
    from serve_app.devtools.ports import free_port

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = free_port()
    config = AppConfig(
        model=str(model),
        jobs={"db_path": str(Path(tempfile.mkdtemp()) / "j.db")},
        ingress={"max_queued_requests": ingress_max_queued}
        | ({} if max_scoring_pairs is None else {"max_scoring_pairs": max_scoring_pairs}),
    )
    # As docs/OPERATIONS.md ("Overload") says: the proxy's bound at or above the app's.
    proxy_timeout = (config.request_timeout_s or 0) + 10 or None
    serve.start(
        http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": proxy_timeout}
    )
    serve.run(build_app(config), name="zsc")
    return f"http://127.0.0.1:{port}/v1/classify"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the tiny test model")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/overload.json"))
    parser.add_argument("--light", action="store_true", help="1 text x 4 labels per request")
    parser.add_argument(
        "--ingress-max-queued",
        type=int,
        default=-1,
        help="ingress.max_queued_requests (default -1, zsc's default: unbounded); bounded, "
        "Serve's proxy refuses the overflow itself, in plain text",
    )
    parser.add_argument(
        "--max-scoring-pairs",
        type=int,
        default=None,
        help="ingress.max_scoring_pairs (default: zsc's default; 0 = unbounded)",
    )
    args = parser.parse_args()
    if args.light:
        BODY.clear()
        BODY.update(LIGHT)
    model = args.model
    if model is None:
        from serve_app.devtools.test_models import build_test_model

        model = build_test_model(Path(tempfile.mkdtemp()) / "tiny")
    loadavg_before = os.getloadavg()
    url = deploy(model, args.ingress_max_queued, args.max_scoring_pairs)
    asyncio.run(closed_loop(url, 3.0))  # warm: the first requests after "ready" are slow
    sustainable = asyncio.run(closed_loop(url, 10.0))
    rate = sustainable["admitted_per_s"]
    print(f"sustainable: {rate} requests/s ({CLIENTS} clients, closed loop)")
    light = asyncio.run(open_loop(url, 0.8 * rate, min(args.seconds, 20.0)))
    print(f"0.8x: {json.dumps(light)}")
    heavy = asyncio.run(open_loop(url, 4.0 * rate, args.seconds))
    print(f"4x: {json.dumps(heavy)}")
    from serve_app.config import AppConfig

    defaults = AppConfig()
    result = {
        "model": str(args.model) if args.model else "tiny random test model",
        "body": BODY,
        "classifier_max_queued_requests": defaults.classifier.max_queued_requests,
        "classifier_max_ongoing_requests": defaults.classifier.max_ongoing_requests,
        "request_timeout_s": defaults.request_timeout_s,
        "ingress_max_scoring_pairs": defaults.ingress.max_scoring_pairs
        if args.max_scoring_pairs is None
        else args.max_scoring_pairs,
        "ingress_max_ongoing_requests": defaults.ingress.max_ongoing_requests,
        "ingress_max_queued_requests": args.ingress_max_queued,
        "cpus": os.cpu_count(),
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
        "sustainable": sustainable,
        "load_0.8x": light,
        "load_4x": heavy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
