"""zsc's GPU path (issue 8): fp32 against half precision, one replica against four at 0.25 GPU.

    python3 -m bench.bench_gpu [--half float16|bfloat16] [--out bench/results] [--max-seconds 390]
    .venv/bin/python -m bench.bench_gpu --smoke      # the same code path on CPU, about a minute

The one prepared script for a lent GPU machine (one GPU, no network). On the full-size random
model (82.1M parameters, built locally as bench/bench.py builds it) and bench.py's seeded mixed
workload (texts of 10-200 tokens with 2, 5 or 20 labels, each count a third of the pairs):

  (a) ThreadPoolExecutor(max_workers=4), one forward per text, fp32 on the GPU: the baseline
      the issue's "at least 5x on a GPU (same GPU for both)" is measured against.
  (c) a raw batched forward over length-sorted pairs, fp32 and half precision, each at the best
      batch size of a sweep: the half-precision speedup, its largest score difference from fp32,
      and peak GPU memory.
  (d) the service over HTTP (64 and 256 concurrent clients, one text per request), built by
      serve_app.app.build_app from configs/serve_config_gpu.yaml's settings (batching, CPUs,
      ingress), changing only the Classifier's replicas and GPU share: 1 replica x 1 GPU against
      4 x 0.25 GPU, both in half precision; then 1 x 1 in fp32 if time is left.

Figures are medians over rounds (the methods of (a)/(c) interleaved, each doing one slice of the
workload per round); an HTTP round stops sending new requests after a time cap, and the whole run
keeps to --max-seconds (deployments that no longer fit are skipped and say so), so it fits a
device session. The HTTP load comes from several client processes, so that one Python process's
httpx is not what limits a GPU-fast service.

--smoke runs every step on the CPU with the tiny test model and a small workload, a replica's GPU
share standing in as its CPU share (1 x 1 CPU against 4 x 0.25), to check the script end to end.

Writes bench-gpu-<time>.json and .md to the out directory and prints the Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    APP,
    DEFAULT_MODEL_DIR,
    DEFAULT_OUT,
    REPO,
    Item,
    Round,
    Tally,
    batch_size_sweep,
    describe_workload,
    encode_items,
    ensure_model,
    free_port,
    hf_tokenizer,
    http_run,
    loadavg,
    log,
    make_items,
    max_score_difference,
    mixed_counts,
    ratio,
    raw_forward,
    thread_pool,
    tree_cpu_seconds,
)

if TYPE_CHECKING:
    from serve_app.engine.protocol import Pair

os.environ.setdefault("RAY_worker_niceness", "0")  # replicas at the driver's priority

SMOKE_MODEL_DIR = REPO / ".zsc" / "bench-smoke-model"
GPU_CONFIG = REPO / "configs" / "serve_config_gpu.yaml"
HALF_NAMES = {"float16": "fp16", "bfloat16": "bf16"}
# What one deployment costs besides its rounds: deleting the last one, starting the replicas
# (model load, CUDA context), the warm-up requests, reading the stats.
DEPLOY_ALLOWANCE_S = 45.0
MIN_ROUND_CAP_S = 2.0  # an HTTP round shorter than this says little: skip the deployment instead


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does; the HTTP rounds are also capped in time."""

    texts: int  # the mixed workload; each round of (a)/(c)/(d) takes every `rounds`-th text
    rounds: int
    sweep_texts: int  # a subset of the workload for the batch-size sweep (two passes)
    batch_sizes: tuple[int, ...]
    http_clients: tuple[int, ...]
    round_cap_s: float  # an HTTP round sends no new request after this
    client_procs: int  # processes the HTTP clients are spread over
    pool_workers: int = 4


PLANS = {
    # 18k pairs, 6k a round: a few seconds a round at a few thousand pairs/s (a guess, not yet
    # measured on a GPU); a slower service meets the HTTP rounds' time cap instead.
    "gpu": Plan(
        texts=4500,
        rounds=3,
        sweep_texts=600,
        batch_sizes=(16, 32, 64, 128, 256),
        http_clients=(64, 256),
        round_cap_s=10.0,
        client_procs=4,
    ),
    "smoke": Plan(
        texts=48,
        rounds=2,
        sweep_texts=8,
        batch_sizes=(8, 32),
        http_clients=(4, 16),
        round_cap_s=10.0,
        client_procs=2,
    ),
}


@dataclass(frozen=True)
class Layout:
    """One way to deploy the Classifier on the one GPU."""

    replicas: int
    gpu_share: float  # per replica
    dtype: str
    optional: bool = False  # run only when the time left covers it in full

    @property
    def name(self) -> str:
        return f"{self.replicas} x {self.gpu_share:g} GPU, {HALF_NAMES.get(self.dtype, 'fp32')}"


class Budget:
    """The run's time limit, so that the whole run fits one device command."""

    def __init__(self, max_seconds: float):
        self.deadline = time.monotonic() + max_seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


# -- HTTP load from several processes -----------------------------------------------------------


def until(items: Iterable[Item], deadline: float) -> Iterator[Item]:
    """The items, until the wall clock passes deadline (a time.time() value)."""
    for item in items:
        if time.time() >= deadline:
            return
        yield item


def http_client_process(
    url: str, items: list[Item], clients: int, deadline: float
) -> tuple[float, float, list[float], int, int]:
    """One client process's share of a closed-loop HTTP run (bench.http_run). Returns its start
    and end (time.time(), comparable across processes), latencies, pairs answered and errors."""
    started = time.time()
    _, latencies, pairs, errors = asyncio.run(http_run(url, until(items, deadline), clients))
    return started, time.time(), latencies, pairs, errors


def http_load(
    pool: Any, procs: int, url: str, items: Sequence[Item], clients: int, cap_s: float
) -> tuple[float, list[float], int, int]:
    """`clients` closed-loop HTTP clients spread over `procs` processes; no new request after
    cap_s. Returns wall time (first start to last answer), latencies, pairs answered, errors."""
    deadline = time.time() + cap_s
    shares = [
        (url, list(items[i::procs]), max(1, clients // procs), deadline) for i in range(procs)
    ]
    parts = pool.starmap(http_client_process, shares)
    wall = max(p[1] for p in parts) - min(p[0] for p in parts)
    return (
        wall,
        [x for p in parts for x in p[2]],
        sum(p[3] for p in parts),
        sum(p[4] for p in parts),
    )


# -- the service's replicas ---------------------------------------------------------------------


def reset_replica_batch_stats(classifier: Any, replicas: int) -> None:
    """A handle call reaches one replica, chosen by Serve: fan out enough calls at once that every
    replica is almost surely reached (resetting twice is harmless)."""
    for response in [classifier.reset_batch_stats.remote() for _ in range(8 * replicas)]:
        response.result()


def replica_batch_stats(classifier: Any, replicas: int) -> dict[str, Any]:
    """Batch stats merged over the replicas that ran batches: fan out calls as above and keep one
    answer per replica (each answer names its replica)."""
    answers = [r.result() for r in [classifier.batch_stats.remote() for _ in range(8 * replicas)]]
    seen = list({a["replica"]: a for a in answers if a["batches"]}.values())
    batches = sum(a["batches"] for a in seen)

    def weighted(field_name: str) -> float:
        return sum(a[field_name] * a["batches"] for a in seen) / batches if batches else 0.0

    return {
        "batches": batches,
        "mean_pairs_per_batch": weighted("mean_pairs_per_batch"),
        "mean_calls_per_batch": weighted("mean_calls_per_batch"),
        "model_busy_share": weighted("model_busy_share"),
        "replicas_with_batches": len(seen),
    }


def gpu_memory_used_mib() -> int | None:
    """Memory in use on GPU 0, every process's (nvidia-smi), or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def shipped_gpu_args() -> dict[str, Any]:
    """The app builder's args of the GPU config the project ships."""
    import yaml

    config = yaml.safe_load(GPU_CONFIG.read_text())
    return next(a["args"] for a in config["applications"] if a["name"] == APP)


def layout_args(layout: Layout, model_dir: Path, device: str) -> dict[str, Any]:
    """The shipped GPU config with this layout's replicas, GPU share and dtype, on the local model.
    On CPU (--smoke) the GPU share becomes the replica's CPU share, so 1 x 1 and 4 x 0.25 hold
    the same resources there too."""
    args = shipped_gpu_args()
    classifier = dict(args["classifier"], num_replicas=layout.replicas)
    if device == "cuda":
        classifier["num_gpus"] = layout.gpu_share
    else:
        classifier.update(num_gpus=0, num_cpus=layout.gpu_share)
    # Jobs need a SQLite store and add a deployment: not what this bench measures.
    return {
        **args,
        "model": str(model_dir),
        "device": device,
        "dtype": layout.dtype,
        "classifier": classifier,
        "jobs": {"enabled": False},
    }


# -- the phases ---------------------------------------------------------------------------------


def measure_raw(
    models: dict[str, Any],
    mixed_pairs: list[list[Pair]],
    sweep_pairs: list[list[Pair]],
    plan: Plan,
    half: str,
    cpus: int,
) -> dict[str, Any]:
    """(a) and (c): the sweep, the half-precision comparison, memory, then interleaved rounds."""
    import torch

    fp32, half_name = models["fp32"], HALF_NAMES[half]
    on_gpu = fp32.device == "cuda"
    # First forwards of a process (CUDA context, cuBLAS handles, kernel choice) are slow.
    for model in models.values():
        for bs in (min(plan.batch_sizes), max(plan.batch_sizes)):
            raw_forward(model, sweep_pairs, bs)
    thread_pool(fp32, sweep_pairs[: 4 * plan.pool_workers], plan.pool_workers)

    sweep, sweep_logits = batch_size_sweep(models, sweep_pairs, plan.batch_sizes)
    for bs in plan.batch_sizes:
        log(
            "sweep batch "
            + str(bs)
            + ": "
            + ", ".join(f"{n} {sweep[n][bs]:.0f}" for n in models)
            + " pairs/s"
        )
    best_bs = {name: max(values, key=values.get) for name, values in sweep.items()}
    half_report = {
        "dtype": half,
        "speedup": sweep[half_name][best_bs[half_name]] / sweep["fp32"][best_bs["fp32"]],
        "best_batch_size": best_bs,
        **max_score_difference(sweep_logits["fp32"], sweep_logits[half_name], fp32.indices),
    }

    memory: dict[str, dict[str, float]] = {}
    if on_gpu:  # one (c) pass of the sweep subset per precision, at its best batch size
        for name, model in models.items():
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            raw_forward(model, sweep_pairs, best_bs[name])
            weights = sum(p.numel() * p.element_size() for p in model.backend.model.parameters())
            memory[name] = {
                "weights_mib": round(weights / 2**20, 1),
                "peak_activations_mib": round(
                    (torch.cuda.max_memory_allocated() - before) / 2**20, 1
                ),
                "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            }

    tallies: dict[str, Tally] = {}
    methods: list[tuple[str, str, str, Callable[[list[list[Pair]]], tuple[float, list[float]]]]] = [
        (
            "a",
            f"(a) thread pool x{plan.pool_workers}, forward per text",
            "fp32",
            lambda ps: thread_pool(fp32, ps, plan.pool_workers),
        ),
        (
            "c-fp32",
            f"(c) raw sorted forward, batch {best_bs['fp32']}",
            "fp32",
            lambda ps: raw_forward(fp32, ps, best_bs["fp32"])[:2],
        ),
        (
            f"c-{half_name}",
            f"(c) raw sorted forward, batch {best_bs[half_name]}",
            half_name,
            lambda ps: raw_forward(models[half_name], ps, best_bs[half_name])[:2],
        ),
    ]
    for r in range(plan.rounds):
        log(f"raw round {r + 1}/{plan.rounds}")
        pairs = mixed_pairs[r :: plan.rounds]
        for key, name, precision, run in methods[r:] + methods[:r]:  # rotate the order
            cpu = tree_cpu_seconds()
            wall, latencies = run(pairs)
            rnd = Round(sum(map(len, pairs)), wall, tree_cpu_seconds() - cpu, latencies)
            tallies.setdefault(key, Tally(key, name, precision, "mixed")).rounds.append(rnd)
            log(f"  {name} [{precision}]: {rnd.pairs_per_s:.0f} pairs/s")
    return {
        "results": [t.summary(cpus) for t in tallies.values()],
        "sweep": {
            "batch_sizes": list(plan.batch_sizes),
            "pairs_per_s": {
                n: {str(b): round(v, 1) for b, v in vals.items()} for n, vals in sweep.items()
            },
        },
        "half": half_report,
        "memory": memory,
    }


def measure_service(
    layouts: Sequence[Layout],
    model_dir: Path,
    device: str,
    mixed: list[Item],
    plan: Plan,
    budget: Budget,
    cpus: int,
) -> dict[str, Any]:
    """(d): each layout deployed in turn through the project's builder, loaded over HTTP."""
    try:
        import ray
        from ray import serve

        from serve_app.app import build_app
        from serve_app.config import AppConfig
    except ImportError as exc:  # the raw figures still stand; say why these are missing
        log(f"service not measured: {exc}")
        return {"skipped": f"cannot import the serving stack: {exc}", "deployments": []}

    log("starting Ray and Serve")
    # Logical CPUs: one more than the machine's leaves room for the small ingress replicas.
    ray.init(
        address="local",
        num_cpus=cpus + 1,
        num_gpus=1 if device == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=False,
        namespace="zsc-bench-gpu",
    )
    deployments: list[dict[str, Any]] = []
    # Spawned, not forked: the driver runs Ray's threads (and CUDA) by now.
    pool = multiprocessing.get_context("spawn").Pool(plan.client_procs)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        baseline_mib = gpu_memory_used_mib()
        per_layout_rounds = plan.rounds * len(plan.http_clients)
        for layout in layouts:
            entry: dict[str, Any] = {"layout": layout.name, **asdict(layout), "results": []}
            deployments.append(entry)
            room = budget.left() - DEPLOY_ALLOWANCE_S
            cap = min(plan.round_cap_s, room / per_layout_rounds)
            if (layout.optional and cap < plan.round_cap_s) or cap < MIN_ROUND_CAP_S:
                entry["skipped"] = f"skipped, {budget.left():.0f} s of --max-seconds left"
                log(f"{layout.name}: {entry['skipped']}")
                continue
            try:
                measure_layout(
                    entry,
                    layout,
                    model_dir,
                    device,
                    mixed,
                    plan,
                    cap,
                    cpus,
                    pool,
                    url,
                    serve,
                    build_app,
                    AppConfig,
                )
            except Exception as exc:  # keep what the other layouts measured
                log(f"{layout.name} failed: {traceback.format_exc()}")
                entry["failed"] = f"{type(exc).__name__}: {exc}"
            if baseline_mib is not None and (used := gpu_memory_used_mib()) is not None:
                entry["gpu_memory_used_mib"] = used - baseline_mib
            serve.delete(APP)  # frees its GPU share before the next layout is placed
        return {
            "deployments": deployments,
            "gpu_memory_baseline_mib": baseline_mib,
            "ray": ray.__version__,
        }
    finally:
        pool.terminate()
        serve.shutdown()
        ray.shutdown()


def measure_layout(
    entry: dict[str, Any],
    layout: Layout,
    model_dir: Path,
    device: str,
    mixed: list[Item],
    plan: Plan,
    cap: float,
    cpus: int,
    pool: Any,
    url: str,
    serve: Any,
    build_app: Any,
    app_config: Any,
) -> None:
    log(f"deploying {layout.name}")
    config = app_config.model_validate(layout_args(layout, model_dir, device))
    serve.run(build_app(config), name=APP, route_prefix="/")
    classifier = serve.get_deployment_handle("Classifier", app_name=APP)
    info = classifier.model_info.remote().result()
    entry["service"] = {
        "device": info["device"],
        "dtype": info["dtype"],
        "batching": info["batching"],
        "forward_tokens": info["forward_tokens"],
        "classifier": config.classifier.model_dump(),
        "ingress": config.ingress.model_dump(),
    }
    log(f"  up: {info['device']} {info['dtype']}, batching {info['batching']}")
    # Every replica's first requests start its CUDA work: keep them out of the figures.
    http_load(
        pool, plan.client_procs, url, mixed[: 16 * layout.replicas], 4 * layout.replicas, 60.0
    )

    tallies: dict[str, Tally] = {}
    for r in range(plan.rounds):
        items = mixed[r :: plan.rounds]
        clients_order = (
            plan.http_clients[r % len(plan.http_clients) :]
            + plan.http_clients[: r % len(plan.http_clients)]
        )
        for clients in clients_order:
            reset_replica_batch_stats(classifier, layout.replicas)
            cpu = tree_cpu_seconds()
            wall, latencies, pairs, errors = http_load(
                pool, plan.client_procs, url, items, clients, cap
            )
            cpu = tree_cpu_seconds() - cpu
            stats = replica_batch_stats(classifier, layout.replicas)
            rnd = Round(pairs, wall, cpu, latencies, errors, stats)
            name = f"(d) HTTP, {clients} clients, {layout.name}"
            tallies.setdefault(
                str(clients),
                Tally(f"d{clients}", name, HALF_NAMES.get(layout.dtype, "fp32"), "mixed"),
            ).rounds.append(rnd)
            log(
                f"  {clients} clients: {rnd.pairs_per_s:.0f} pairs/s, {stats['mean_pairs_per_batch']:.1f} "
                f"pairs/batch, model busy {stats['model_busy_share']:.0%}, {stats['replicas_with_batches']} "
                f"of {layout.replicas} replica(s) ran batches"
                + (f", {errors} errors" if errors else "")
            )
    for tally in tallies.values():
        summary = tally.summary(cpus)
        stats = [r.batches for r in tally.rounds if r.batches is not None]
        summary["model_busy_share"] = round(
            statistics.median(b["model_busy_share"] for b in stats), 3
        )
        summary["replicas_with_batches"] = min(b["replicas_with_batches"] for b in stats)
        entry["results"].append(summary)
    entry["round_cap_s"] = round(cap, 1)


# -- report -------------------------------------------------------------------------------------


def served(report: dict[str, Any], layout: Layout, clients: int) -> dict[str, Any] | None:
    for entry in report["service"]["deployments"]:
        if entry["layout"] == layout.name:
            return next((r for r in entry["results"] if r["key"] == f"d{clients}"), None)
    return None


def targets(report: dict[str, Any], layouts: Sequence[Layout], top: int) -> list[dict[str, Any]]:
    raw = {r["key"]: r for r in report["raw"]["results"]}
    half = report["raw"]["half"]
    half_name = HALF_NAMES[half["dtype"]]
    one, four = served(report, layouts[0], top), served(report, layouts[1], top)

    def ratio_target(
        target: str, x: dict[str, Any] | None, y: dict[str, Any] | None, need: float
    ) -> dict[str, Any]:
        """x's pairs/s over y's against `need`; "not measured" where either run is missing."""
        if not (x and y and x["pairs_per_s"] and y["pairs_per_s"]):
            return {"target": target, "measured": "not measured", "met": None}
        rate = x["pairs_per_s"] / y["pairs_per_s"]
        return {
            "target": target,
            "met": rate >= need,
            "measured": f"{x['pairs_per_s']:.0f} / {y['pairs_per_s']:.0f} = {rate:.2f}x",
        }

    return [
        {
            "target": f"{half_name} vs fp32, raw (c) at each one's best batch size: faster (> 1x)",
            "measured": f"{half['speedup']:.2f}x",
            "met": half["speedup"] > 1,
        },
        {
            "target": f"{half_name}: largest score difference vs fp32 <= 0.02",
            "measured": f"{half['max_abs_score_diff']:.5f}",
            "met": half["max_abs_score_diff"] <= 0.02,
        },
        ratio_target(
            f"{layouts[1].name} vs {layouts[0].name} (HTTP, {top} clients): at least as fast (>= 1x)",
            four,
            one,
            1.0,
        ),
        ratio_target(
            f"service ({layouts[1].name}, the shipped layout; HTTP, {top} clients) vs (a): >= 5x",
            four,
            raw["a"],
            5.0,
        ),
    ]


def markdown(report: dict[str, Any]) -> str:
    m, w, raw = report["machine"], report["workload"], report["raw"]
    by_key = {r["key"]: r for r in raw["results"]}
    half = raw["half"]
    half_name = HALF_NAMES[half["dtype"]]
    a, c_half = by_key["a"], by_key[f"c-{half_name}"]
    lines = [
        f"# zsc GPU bench — {report['plan_name']} run",
        "",
        f"{m['accelerator']}; {m['cpus']} CPUs, torch {m['torch']} (CUDA {m['cuda']}), Python "
        f"{m['python']}, load average {m['loadavg_start']} at start. Model: "
        f"{'tiny random test model (smoke run: figures mean nothing)' if report['plan_name'] == 'smoke' else 'full-size random (82.1M parameters)'}. "
        f"Workload: {w['texts']} texts, {w['pairs']} pairs (texts per label count "
        f"{w['texts_per_label_count']}), text tokens {w['text_tokens']}, in {report['plan']['rounds']} "
        "rounds; figures are medians over rounds. fp32 is torch's default (TF32 matmuls off).",
        "",
        "| run | precision | pairs/s | vs (a) | p50 ms | p99 ms | CPU share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in raw["results"]:
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['pairs_per_s']:.0f} | "
            f"{ratio(r['pairs_per_s'], a['pairs_per_s'])} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['cpu_share']:.0%} |"
        )
    names = list(raw["sweep"]["pairs_per_s"])
    lines += [
        "",
        "Latency: (a) one text's forward; (c) from the batch job taking up a text to its scores. "
        "CPU share: CPU time of the bench's process tree / (wall time x cores).",
        "",
        "Batch-size sweep for (c) (pairs/s, a subset of the workload, two passes):",
        "",
        "| batch size | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for bs in raw["sweep"]["batch_sizes"]:
        lines.append(
            f"| {bs} | "
            + " | ".join(f"{raw['sweep']['pairs_per_s'][n][str(bs)]:.0f}" for n in names)
            + " |"
        )
    lines += [
        "",
        f"{half_name} vs fp32 on (c), best batch size each ({half['best_batch_size']}): "
        f"**{half['speedup']:.2f}x**; largest score difference {half['max_abs_score_diff']:.5f} "
        f"(single-label {half['max_abs_score_diff_single_label']:.5f}, multi-label "
        f"{half['max_abs_score_diff_multi_label']:.5f}; largest logit difference "
        f"{half['max_abs_logit_diff']:.4f}). Caveat: random weights give near-uniform scores "
        f"(single-label scores spread by {half['mean_fp32_score_spread_single_label']:.4f} on "
        "average), so a trained model's deviation can be larger.",
    ]
    for name, mem in raw["memory"].items():
        lines.append(
            f"GPU memory, {name}: weights {mem['weights_mib']} MiB, peak activations of one "
            f"(c) pass {mem['peak_activations_mib']} MiB (torch.cuda.max_memory_allocated)."
        )
    service = report["service"]
    lines += ["", "## The service over HTTP", ""]
    if service.get("skipped"):
        lines.append(f"Not measured: {service['skipped']}.")
    else:
        lines += [
            f"Built by serve_app.app.build_app from {GPU_CONFIG.relative_to(REPO)} (batching, CPUs, "
            f"ingress as shipped), only the Classifier's replicas, GPU share and dtype changed; one "
            f"text per request, closed loop, clients spread over {report['plan']['client_procs']} "
            "processes; a round sends no new request after its cap.",
            "",
            f"| layout | clients | pairs/s | vs (a) | vs (c) {half_name} | p50 ms | p99 ms | pairs/batch | "
            "requests/batch | model busy | replicas busy | CPU share | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        notes = []
        for entry in service["deployments"]:
            for r in entry["results"]:
                lines.append(
                    f"| {entry['layout']} | {r['key'][1:]} | {r['pairs_per_s']:.0f} | "
                    f"{ratio(r['pairs_per_s'], a['pairs_per_s'])} | {ratio(r['pairs_per_s'], c_half['pairs_per_s'])} | "
                    f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r.get('mean_pairs_per_batch', 0):.1f} | "
                    f"{r.get('mean_calls_per_batch', 0):.1f} | {r['model_busy_share']:.0%} | "
                    f"{r['replicas_with_batches']}/{entry['replicas']} | {r['cpu_share']:.0%} | {r['errors']} |"
                )
            if entry.get("skipped") or entry.get("failed"):
                notes.append(
                    f"{entry['layout']}: {entry.get('skipped') or 'failed: ' + entry['failed']}."
                )
            if entry.get("gpu_memory_used_mib") is not None:
                notes.append(
                    f"{entry['layout']}: {entry['gpu_memory_used_mib']} MiB of GPU memory in use "
                    "by its replicas after its runs (nvidia-smi, less what was in use before)."
                )
        lines += [
            "",
            "Latency: a request's end-to-end time under load. pairs/batch and requests/batch: per "
            "Classifier model batch, over all replicas. Model busy: the share of the time from a "
            "replica's first batch to its last that its model was computing (low = the model waits "
            "for requests: the limit is upstream of it). Replicas busy: the fewest replicas that ran "
            "batches in a round.",
        ]
        if notes:
            lines += ["", *notes]
    lines += ["", "| target (issue 8) | measured | verdict |", "|---|---|---|"]
    for t in report["targets"]:
        verdict = "not measured" if t["met"] is None else "met" if t["met"] else "NOT met"
        lines.append(f"| {t['target']} | {t['measured']} | {verdict} |")
    lines += ["", f"Run took {report['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Every step on the CPU with the tiny test model, to check the script (~1 min).",
    )
    parser.add_argument(
        "--half",
        choices=tuple(HALF_NAMES),
        default="float16",
        help="The half precision compared with fp32 and served.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="Where to write JSON and Markdown."
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="The random model (built here when missing); default .zsc/bench-model, "
        "or .zsc/bench-smoke-model with --smoke.",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=390.0,
        help="Time limit of the measurements; deployments that no longer fit are skipped.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the workload.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    budget = Budget(opts.max_seconds)
    started = time.monotonic()
    plan_name = "smoke" if opts.smoke else "gpu"
    plan = PLANS[plan_name]
    device = "cpu" if opts.smoke else "cuda"
    cpus = os.cpu_count() or 1
    load_start = loadavg()

    import torch

    from serve_app.config import ModelConfig
    from serve_app.engine.engine import Engine

    if device == "cuda" and not torch.cuda.is_available():
        log(
            f"no GPU visible to torch {torch.__version__}: this needs a CUDA build of torch and a GPU "
            "(--smoke checks the script on CPU)"
        )
        return 2
    accelerator = (
        f"{torch.cuda.get_device_name(0)} "
        f"({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
        if device == "cuda"
        else "CPU only (smoke run)"
    )
    log(f"plan {plan_name} on {accelerator}")
    model_dir = ensure_model(
        (opts.model_dir or (SMOKE_MODEL_DIR if opts.smoke else DEFAULT_MODEL_DIR)).resolve(),
        full_size=not opts.smoke,
    )
    half_name = HALF_NAMES[opts.half]
    models = {
        name: Engine(ModelConfig(model=str(model_dir), device=device, dtype=dtype), str(model_dir))
        for name, dtype in (("fp32", "float32"), (half_name, opts.half))
    }
    fp32 = models["fp32"]

    mixed = make_items(hf_tokenizer(model_dir), mixed_counts(plan.texts, opts.seed), seed=opts.seed)
    mixed_pairs = encode_items(fp32, mixed)
    step = max(1, len(mixed) // plan.sweep_texts)
    sweep_pairs = mixed_pairs[::step][: plan.sweep_texts]
    workload = describe_workload(mixed, mixed_pairs)
    log(
        f"workload: {workload['texts']} texts / {workload['pairs']} pairs; sweep {sum(map(len, sweep_pairs))} pairs"
    )

    raw = measure_raw(models, mixed_pairs, sweep_pairs, plan, opts.half, cpus)
    # The driver's models would only hold GPU memory the replicas' figures should not include.
    del models, fp32
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    layouts = [
        Layout(1, 1.0, opts.half),
        Layout(4, 0.25, opts.half),
        Layout(1, 1.0, "float32", optional=True),
    ]
    service = measure_service(layouts, model_dir, device, mixed, plan, budget, cpus)

    report: dict[str, Any] = {
        "plan_name": plan_name,
        "plan": asdict(plan),
        "seed": opts.seed,
        "machine": {
            "accelerator": accelerator,
            "cpus": cpus,
            "torch": torch.__version__,
            "cuda": torch.version.cuda or "none",
            "python": sys.version.split()[0],
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        },
        "workload": workload,
        "raw": raw,
        "service": service,
    }
    report["targets"] = targets(report, layouts, max(plan.http_clients))
    report["elapsed_s"] = time.monotonic() - started
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.out / f"bench-gpu-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
