"""zsc against its peers, against the hardware's limit, and across backends and layouts, in one run.

    .venv/bin/python -m bench [--quick] [--backend torch|int8|onnx|onnx-int8] [--out DIR]
    zsc bench [--quick] [--backend ...] [--out DIR]

On the full-size random model (82.1M parameters, the real model's cost; built once into
.zsc/bench-model, with its ONNX files), over a seeded workload of texts of 10-200 tokens with 2,
5 or 20 labels (one fixed label set per count; each label count brings a third of the pairs):

  (a) ThreadPoolExecutor(max_workers=4), one forward per text (its labels as one small, unsorted
      batch): the approach this project grew from. Always torch fp32.
  (b) transformers' zero-shot pipeline, batch_size=32, one streaming call per label set. fp32.
  (c) a raw batched forward of the chosen backend over length-sorted pairs, at the best batch size
      of a sweep (8/16/32/64): the limit for the serving path. The sweep runs every backend
      (torch fp32 and int8, ONNX Runtime fp32 and int8) and reports each one's speed and largest
      score difference from torch fp32.
  (d) the service over HTTP (real sockets, httpx async), 16 and 64 concurrent clients, one text
      per request, deployed with the default layout (what `make run` gives: no CPU or thread
      setting).
  (e) the service through a DeploymentHandle, 16 concurrent callers.
  (f) layouts: the service over HTTP, 64 clients, 5-label requests, with the default layout
      against hand-tuned ones (explicit num_cpus, torch_threads x forward_workers), between two
      halves of (c) on the same pairs.
Also: an idle request (1 text, 5 labels) against one forward of its pairs, and the first
request right after the app reports ready against a warm one.

The machine may be shared. So the main workload runs in rounds, each method doing a slice of it
per round in rotating order, and pairs/s is the median over rounds; every process (driver and Ray
workers) runs at one CPU priority; and each run records the CPU time its whole process tree used:
"CPU share" is the part of the machine's cores it got, "CPU-norm" its pairs per CPU-second times
the cores. Compare ratios within one run, not absolute figures across runs.

Writes service-<backend>.json (with the command), .md and .png to the out directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    APP,
    DEFAULT_OUT,
    MAX_TOKENS,
    MIN_TOKENS,
    Item,
    Round,
    Tally,
    add_common_args,
    batch_size_sweep,
    descendant_nice,
    describe_workload,
    encode_items,
    ensure_model,
    handle_run,
    hf_tokenizer,
    http_run,
    label_sets,
    loadavg,
    local_serve,
    log,
    make_items,
    max_score_difference,
    mixed_counts,
    native_quantize_preset,
    now,
    ratio,
    raw_forward,
    run_pipeline,
    thread_pool,
    tree_cpu_seconds,
    use_threads,
)

# Ray starts its workers (Serve replicas included) at nice 15 by default, below this driver,
# where (a)-(c) run. On a machine shared with other work that alone would hand the baselines
# more CPU than the service: run everything at the same priority.
os.environ.setdefault("RAY_worker_niceness", "0")

BACKENDS = ("torch", "int8", "onnx", "onnx-int8")
# What each --backend name deploys: the config's backend and, for ONNX, which file.
BACKEND_SETTINGS: dict[str, dict[str, str]] = {
    "torch": {"backend": "torch"},
    "int8": {"backend": "int8"},
    "onnx": {"backend": "onnx", "onnx_file": "onnx/model.onnx"},
    "onnx-int8": {"backend": "onnx"},  # onnx_file: the quantised file for this CPU, set in main
}
PRECISION = {"torch": "fp32", "int8": "int8", "onnx": "onnx fp32", "onnx-int8": "onnx int8"}


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does. Sized on an idle 2-core machine (~13 pairs/s fp32 on
    these lengths) to take about 12 minutes (default) or under 4 (quick)."""

    mixed_texts: int  # the main workload, split into `rounds` slices
    rounds: int
    five_label_texts: int  # the 5-label workload of (f), in halves around (c)
    sweep_texts: int  # a subset of the main workload for the batch-size sweep (two passes)
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    idle_repeats: int = 8
    http_clients: tuple[int, ...] = (16, 64)
    handle_callers: int = 16
    pool_workers: int = 4
    pipeline_batch_size: int = 32


PLANS = {
    "default": Plan(mixed_texts=135, rounds=3, five_label_texts=48, sweep_texts=15),
    "quick": Plan(mixed_texts=15, rounds=1, five_label_texts=8, sweep_texts=5, idle_repeats=3),
}


@dataclass(frozen=True)
class Layout:
    """One way to size the Classifier: None everywhere is the default (num_cpus auto)."""

    name: str
    num_cpus: float | None = None
    torch_threads: int | None = None
    forward_workers: int | None = None

    def args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.num_cpus is not None:
            args["classifier"] = {"num_cpus": self.num_cpus}
        if self.torch_threads is not None:
            args["torch_threads"] = self.torch_threads
        if self.forward_workers is not None:
            args["forward_workers"] = self.forward_workers
        return args


def hand_tuned_layouts(cpus: int) -> list[Layout]:
    """Every threads x workers split of the machine's cores, and one core (the old default)."""
    splits = [t for t in (1, 2, 4, 8, 16) if t <= cpus and cpus % t == 0]
    layouts = [
        Layout(f"{cpus} CPUs, {t} thread(s) x {cpus // t}", cpus, t, cpus // t) for t in splits
    ]
    return [*layouts, Layout("1 CPU, 1 thread x 1 (the previous default)", 1, 1, 1)]


# -- report -------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    by_key = {r["key"]: r for r in rows}
    a = by_key.get("a")
    m, w = report["machine"], report["workload"]
    svc = report["service"]
    lines = [
        f"# zsc bench — {report['backend']} backend, {report['plan_name']} run",
        "",
        f"{m['cpus']} CPUs, torch {m['torch']}, Ray {m['ray']}. Load average {m['loadavg_start']} "
        f"at start, {m['loadavg_end']} at end: **figures are medians over {report['plan']['rounds']} "
        "interleaved round(s); compare the ratios within this run**, not absolute figures across "
        f"runs. Model: full-size random (82.1M parameters). Main workload: {w['mixed']['texts']} "
        f"texts, {w['mixed']['pairs']} pairs (texts per label count "
        f"{w['mixed']['texts_per_label_count']}), text tokens {w['mixed']['text_tokens']}; 5-label "
        f"workload: {w['five_label']['texts']} texts, {w['five_label']['pairs']} pairs. Service, "
        f"default layout: one Classifier replica, {svc['cpus']} CPUs / {svc['torch_threads']} "
        f"thread(s) x {svc['forward_workers']} sub-batches at once, batching {svc['batching']}.",
        "",
        "| run | backend | workload | pairs/s | vs (c) | vs (a) | CPU share | CPU-norm pairs/s | "
        "CPU-norm vs (c) | p50 ms | p99 ms | pairs/batch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = by_key.get("c5" if r["workload"] == "5-label" else "c")
        same_as_a = a and r["workload"] == a["workload"]
        batch = r.get("mean_pairs_per_batch")
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['workload']} | {r['pairs_per_s']:.2f} | "
            f"{ratio(r['pairs_per_s'], c and c['pairs_per_s'])} | "
            f"{ratio(r['pairs_per_s'], a['pairs_per_s']) if same_as_a and a else '—'} | "
            f"{r['cpu_share']:.0%} | {r['cpu_norm_pairs_per_s'] or 0:.2f} | "
            f"{ratio(r['cpu_norm_pairs_per_s'], c and c['cpu_norm_pairs_per_s'])} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {f'{batch:.1f}' if batch else '—'} |"
        )
    lines += [
        "",
        "pairs/s: median over rounds of pairs / wall time. CPU share: CPU time of the bench's "
        "whole process tree (driver + its Ray processes) / (wall time x cores). CPU-norm: pairs per "
        "CPU second x cores. Latency: (d)/(e)/(f) a request's end-to-end time under load (closed "
        "loop); (a) one text's forward; (b)/(c) from the moment the batch job took up a text to its "
        "scores. pairs/batch: mean pairs per Classifier model batch (cross-request batching).",
        "",
        "Backends on (c), each at its best batch size of the sweep (a subset of the main workload, "
        "two passes), against torch fp32:",
        "",
        "| backend | best batch | pairs/s | vs torch fp32 | largest score difference | "
        "largest logit difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, b in report["backends"].items():
        lines.append(
            f"| {name} | {b['best_batch_size']} | {b['pairs_per_s']:.2f} | {b['speedup']:.2f}x | "
            f"{b['max_abs_score_diff']:.5f} | {b['max_abs_logit_diff']:.4f} |"
        )
    lines += [
        "",
        "Random weights make near-uniform scores (single-label scores spread by "
        f"{report['score_spread']:.4f} on average), so a trained model's deviations can be larger.",
        "",
        "Batch-size sweep for (c) (pairs/s):",
        "",
        "| batch size | " + " | ".join(report["sweep"]["backends"]) + " |",
        "|---:|" + "---:|" * len(report["sweep"]["backends"]),
    ]
    for bs in report["sweep"]["batch_sizes"]:
        cells = [
            f"{report['sweep']['pairs_per_s'][b][str(bs)]:.2f}" for b in report["sweep"]["backends"]
        ]
        lines.append(f"| {bs} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(f) Layouts, HTTP 64 clients, 5-label requests, against (c) on the same pairs "
        f"({report['layouts']['c5_pairs_per_s']:.2f} pairs/s):",
        "",
        "| layout | threads x workers | pairs/s | vs best | vs (c) |",
        "|---|---|---:|---:|---:|",
    ]
    best = report["layouts"]["best_pairs_per_s"]
    for row in report["layouts"]["rows"]:
        lines.append(
            f"| {row['layout']} | {row['torch_threads']} x {row['forward_workers']} | "
            f"{row['pairs_per_s']:.2f} | {ratio(row['pairs_per_s'], best)} | "
            f"{ratio(row['pairs_per_s'], report['layouts']['c5_pairs_per_s'])} |"
        )
    idle, first = report["idle"], report["first_request"]
    lines += [
        "",
        f"Idle, 1 text ({idle['text_tokens']} tokens) x 5 labels, median of {idle['repeats']}: one "
        f"forward {idle['forward_ms']:.1f} ms; HTTP {idle['http_ms']:.1f} ms "
        f"({idle['http_overhead_ms']:+.1f}); handle {idle['handle_ms']:.1f} ms "
        f"({idle['handle_overhead_ms']:+.1f}).",
        "",
        f"First request right after the app reported ready: {first['first_ms']:.0f} ms; the same "
        f"request warm (median of {len(first['warm_ms'])}, 5 s later): "
        f"{statistics.median(first['warm_ms']):.0f} ms.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'NOT met'} |")
    lines += ["", f"Run took {report['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['name']}\n[{r['backend']}, {r['workload']}]" for r in rows]
    y = np.arange(len(rows))[::-1]
    colors = [
        "#9aa5b1"
        if r["key"] in ("a", "b")
        else "#3b7dd8"
        if r["key"].startswith("c")
        else "#e07b39"
        for r in rows
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(rows) + 1.8), sharey=True)
    for ax, field_name, title in (
        (axes[0], "pairs_per_s", "pairs/s (median over rounds)"),
        (axes[1], "cpu_norm_pairs_per_s", "CPU-normalized pairs/s"),
    ):
        values = [r[field_name] or 0 for r in rows]
        ax.barh(y, values, color=colors)
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:.1f}", va="center", fontsize=8)
        ax.set_xlabel(title)
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(
        f"zsc bench — {report['backend']} backend, full-size model, {report['machine']['cpus']} "
        "CPUs (grey: peers, blue: raw limit (c), orange: service)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A small run to check it works.")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="Backend of (c), (d), (e) and (f); (a) and (b) are always torch fp32.",
    )
    add_common_args(parser, DEFAULT_OUT, "the report")
    return parser.parse_args(argv)


def ensure_onnx(model_dir: Path, preset: str) -> str:
    """The model's ONNX files (fp32 and this CPU's int8), exported once; the int8 file's name."""
    from serve_app.engine import export

    if not (model_dir / export.ONNX_DIR / export.FP32_FILE).is_file():
        log("exporting the model to ONNX (once)")
        export.export_onnx(model_dir)
    quantized = model_dir / export.ONNX_DIR / export.quantized_file(preset)
    if not quantized.is_file():
        log(f"quantising the ONNX model for {preset} (once)")
        export.quantize_onnx(model_dir, preset)
    return f"{export.ONNX_DIR}/{quantized.name}"


@dataclass
class Workload:
    """The seeded texts of one run, with their pairs as the engine encodes them."""

    mixed: list[Item]
    mixed_pairs: list[list[Any]]
    five: list[Item]
    five_pairs: list[list[Any]]
    sweep_pairs: list[list[Any]]
    description: dict[str, Any]


@dataclass
class Bench:
    """What every measurement of one run shares: the options, the plan, the engines in the
    driver, the pipeline, the workload, and each method's rounds."""

    opts: argparse.Namespace
    plan: Plan
    cpus: int
    model_dir: Path
    models: dict[str, Any]  # precision -> Engine, the service's default thread layout
    baseline: Any  # (a)'s engine: torch fp32, every core in one forward
    pipe: Any
    work: Workload
    tallies: dict[str, Tally]

    @property
    def precision(self) -> str:
        return PRECISION[self.opts.backend]

    @property
    def chosen(self) -> Any:
        return self.models[self.precision]

    @property
    def layout(self) -> str:
        return f"{self.chosen.threads} thread x {self.chosen.workers}"

    def record(self, key: str, name: str, backend: str, workload: str, rnd: Round) -> None:
        self.tallies.setdefault(key, Tally(key, name, backend, workload)).rounds.append(rnd)
        extra = f", {rnd.batches['mean_pairs_per_batch']:.1f} pairs/batch" if rnd.batches else ""
        err = f", {rnd.errors} errors" if rnd.errors else ""
        log(
            f"  {name} [{workload}]: {rnd.pairs_per_s:.2f} pairs/s, CPU share "
            f"{rnd.cpu_s / (rnd.wall_s * self.cpus):.0%}{extra}{err}"
        )


def offline(run: Callable[[], tuple[float, list[float]]], pairs: int) -> Round:
    """A method that runs in the driver: its wall time and its process tree's CPU time."""
    cpu = tree_cpu_seconds()
    wall, lat = run()
    return Round(pairs, wall, tree_cpu_seconds() - cpu, lat)


def online(
    classifier: Any,
    run: Callable[[], Coroutine[Any, Any, tuple[float, list[float], int, int]]],
) -> Round:
    """A method that calls the service: also the Classifier's batches meanwhile."""
    classifier.reset_batch_stats.remote().result()
    cpu = tree_cpu_seconds()
    wall, lat, pairs, errors = asyncio.run(run())
    cpu = tree_cpu_seconds() - cpu
    return Round(pairs, wall, cpu, lat, errors, classifier.batch_stats.remote().result())


def load(opts: argparse.Namespace) -> Bench:
    """The model (built once), its engines in the driver, the pipeline and the workload."""
    from transformers import pipeline

    from serve_app.config import ModelConfig
    from serve_app.engine.engine import Engine

    plan = PLANS["quick" if opts.quick else "default"]
    cpus = os.cpu_count() or 1
    model_dir = ensure_model(opts.model_dir.resolve())
    BACKEND_SETTINGS["onnx-int8"]["onnx_file"] = ensure_onnx(model_dir, native_quantize_preset())

    def engine(settings: dict[str, Any]) -> Engine:
        return Engine(ModelConfig(model=str(model_dir), **settings), str(model_dir))

    # The serving path's engines use the service's default thread layout (serve_app/engine/
    # threads.py: 1 thread per sub-batch, one sub-batch per CPU); (a) runs as the project began,
    # torch's default threads (one forward using every core) in a pool of 4 threads.
    models = {PRECISION[name]: engine(settings) for name, settings in BACKEND_SETTINGS.items()}
    baseline = engine({"backend": "torch", "torch_threads": cpus, "forward_workers": 1})
    fp32 = models["fp32"]
    tokenizer = hf_tokenizer(model_dir)
    mixed = make_items(tokenizer, mixed_counts(plan.mixed_texts, opts.seed), seed=opts.seed)
    five = make_items(tokenizer, [5] * plan.five_label_texts, seed=opts.seed + 1)
    mixed_pairs, five_pairs = encode_items(fp32, mixed), encode_items(fp32, five)
    step = max(1, len(mixed) // plan.sweep_texts)
    sweep_items = mixed[::step][: plan.sweep_texts]
    sweep_pairs = mixed_pairs[::step][: plan.sweep_texts]
    description = {
        "mixed": describe_workload(mixed, mixed_pairs),
        "five_label": describe_workload(five, five_pairs),
        "sweep": describe_workload(sweep_items, sweep_pairs),
    }
    pipe = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    # First forwards of a process are slow: keep them out of the figures.
    for m in [*models.values(), baseline]:
        use_threads(m)
        m.forward([p for ps in sweep_pairs[:2] for p in ps][:8])
    pipe(mixed[0].text, candidate_labels=list(mixed[0].labels))
    work = Workload(mixed, mixed_pairs, five, five_pairs, sweep_pairs, description)
    bench = Bench(opts, plan, cpus, model_dir, models, baseline, pipe, work, {})
    log(
        f"loaded {', '.join(models)} in the driver: {bench.layout}; baseline {cpus} threads x 1; "
        f"workload: {description['mixed']['pairs']} pairs mixed, "
        f"{description['five_label']['pairs']} pairs 5-label, sweep "
        f"{description['sweep']['pairs']} pairs"
    )
    return bench


def app_args(bench: Bench, layout: Layout) -> dict[str, Any]:
    # The default layout is what `make run` deploys: no CPU or thread setting. Jobs off: no
    # store to write, and the JobRunner reserves no CPU either way.
    return {
        "model": str(bench.model_dir),
        **BACKEND_SETTINGS[bench.opts.backend],
        "jobs": {"enabled": False},
        **layout.args(),
    }


def deploy(bench: Bench, layout: Layout) -> Any:
    """Deploy one layout as the bench app; returns its Classifier's handle."""
    from ray import serve

    from serve_app.app import build_app

    serve.delete(APP)  # frees the last layout's CPUs before this one is placed
    serve.run(build_app(app_args(bench, layout)), name=APP, route_prefix="/")
    return serve.get_deployment_handle("Classifier", app_name=APP)


def measure_first_request(url: str, item: Item) -> dict[str, Any]:
    """The first request right after serve.run returned (the app reported ready), against the
    same request warm, 5 s later."""
    import httpx

    probe = {"texts": [item.text], "labels": list(item.labels)}
    with httpx.Client(base_url=url, timeout=300) as http:
        begin = now()
        http.post("/v1/classify", json=probe).raise_for_status()
        first_ms = 1000 * (now() - begin)
        time.sleep(5)
        warm_ms = []
        for _ in range(5):
            begin = now()
            http.post("/v1/classify", json=probe).raise_for_status()
            warm_ms.append(1000 * (now() - begin))
    log(f"first request after ready {first_ms:.0f} ms, warm {statistics.median(warm_ms):.0f} ms")
    return {"first_ms": first_ms, "warm_ms": warm_ms}


def measure_backends(bench: Bench) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """(c)'s batch-size sweep over every backend: each one's speed at its best batch size and
    its largest score difference from torch fp32. Returns (backends, sweep, best batch sizes)."""
    sweep_models = {**bench.models, f"fp32, {bench.cpus} threads x 1": bench.baseline}
    sweep, logits = batch_size_sweep(sweep_models, bench.work.sweep_pairs, bench.plan.batch_sizes)
    for bs in bench.plan.batch_sizes:
        log(f"sweep batch {bs}: " + ", ".join(f"{n} {v[bs]:.2f}" for n, v in sweep.items()))
    best_bs = {name: max(values, key=lambda b: values[b]) for name, values in sweep.items()}
    backends = {}
    for name in bench.models:
        diff = max_score_difference(logits["fp32"], logits[name], bench.models["fp32"].indices)
        backends[name] = {
            "best_batch_size": best_bs[name],
            "pairs_per_s": sweep[name][best_bs[name]],
            "speedup": sweep[name][best_bs[name]] / sweep["fp32"][best_bs["fp32"]],
            **diff,
        }
    return backends, sweep, best_bs


def measure_idle(bench: Bench, url: str, handle: Any) -> dict[str, Any]:
    """One request at a time (1 text, 5 labels) over HTTP and the handle, against one forward
    of the same pairs."""
    import httpx

    sample = min(bench.work.mixed, key=lambda i: abs(i.tokens - (MIN_TOKENS + MAX_TOKENS) // 2))
    labels = list(label_sets()[5])
    pairs = encode_items(bench.models["fp32"], [Item(sample.text, tuple(labels), sample.tokens)])
    body = {"texts": [sample.text], "labels": labels}
    fwd, http_lat, handle_lat = [], [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        for warm in (True,) * 2 + (False,) * bench.plan.idle_repeats:
            use_threads(bench.chosen)
            begin = now()
            bench.chosen.forward(pairs[0])
            f = now() - begin
            time.sleep(0.1)
            begin = now()
            http.post("/v1/classify", json=body).raise_for_status()
            h = now() - begin
            time.sleep(0.1)
            begin = now()
            handle.classify.remote(texts=[sample.text], labels=labels).result()
            d = now() - begin
            time.sleep(0.1)
            if not warm:
                fwd.append(f)
                http_lat.append(h)
                handle_lat.append(d)
    idle = {
        "repeats": bench.plan.idle_repeats,
        "text_tokens": sample.tokens,
        "forward_ms": 1000 * statistics.median(fwd),
        "http_ms": 1000 * statistics.median(http_lat),
        "handle_ms": 1000 * statistics.median(handle_lat),
    }
    idle["http_overhead_ms"] = idle["http_ms"] - idle["forward_ms"]
    idle["handle_overhead_ms"] = idle["handle_ms"] - idle["forward_ms"]
    log(
        f"idle: forward {idle['forward_ms']:.1f} ms, HTTP {idle['http_ms']:.1f}, "
        f"handle {idle['handle_ms']:.1f}"
    )
    return idle


def c_name(bench: Bench, batch_size: int) -> str:
    return f"(c) raw sorted forward, batch {batch_size}, {bench.layout}"


def measure_methods(bench: Bench, url: str, handle: Any, classifier: Any, bs: int) -> None:
    """(a)-(e) on the mixed workload, in rounds, each round in a rotated order."""
    plan, chosen = bench.plan, bench.chosen
    Method = Callable[[list[Item], list[list[Any]]], Round]
    methods: list[tuple[str, str, str, Method]] = [
        (
            "c",
            c_name(bench, bs),
            bench.precision,
            lambda its, ps: offline(lambda: raw_forward(chosen, ps, bs)[:2], sum(map(len, ps))),
        ),
        (
            "a",
            f"(a) thread pool x{plan.pool_workers}, forward per text",
            "fp32",
            lambda its, ps: offline(
                lambda: thread_pool(bench.baseline, ps, plan.pool_workers), sum(map(len, ps))
            ),
        ),
        (
            "b",
            f"(b) transformers pipeline, batch_size={plan.pipeline_batch_size}",
            "fp32",
            lambda its, ps: offline(
                lambda: run_pipeline(bench.pipe, its, plan.pipeline_batch_size), sum(map(len, ps))
            ),
        ),
        *[
            (
                f"d{n}",
                f"(d) HTTP, {n} clients, default layout",
                bench.precision,
                lambda its, ps, n=n: online(classifier, lambda: http_run(url, its, n)),
            )
            for n in plan.http_clients
        ],
        (
            "e",
            f"(e) handle, {plan.handle_callers} callers",
            bench.precision,
            lambda its, ps: online(
                classifier, lambda: handle_run(handle, its, plan.handle_callers)
            ),
        ),
    ]
    work = bench.work
    for r in range(plan.rounds):
        log(f"round {r + 1}/{plan.rounds}")
        items, pairs = work.mixed[r :: plan.rounds], work.mixed_pairs[r :: plan.rounds]
        for key, name, backend, run in methods[r:] + methods[:r]:  # rotate the order
            bench.record(key, name, backend, "mixed", run(items, pairs))


def measure_layouts(bench: Bench, url: str, bs: int) -> list[dict[str, Any]]:
    """(f): the layouts on 5-label requests over HTTP, between two halves of (c) on the same
    pairs. The default layout is deployed already."""
    import httpx

    top = max(bench.plan.http_clients)
    default = Layout("default (num_cpus auto)")
    five, five_pairs = bench.work.five, bench.work.five_pairs

    def c5_half(part: int) -> None:
        half = five_pairs[part::2]
        bench.record(
            "c5",
            c_name(bench, bs),
            bench.precision,
            "5-label",
            offline(lambda: raw_forward(bench.chosen, half, bs)[:2], sum(map(len, half))),
        )

    c5_half(0)
    rows = []
    for i, candidate in enumerate([default, *hand_tuned_layouts(bench.cpus)]):
        classifier = deploy(bench, candidate) if i else serve_classifier()
        shape = classifier.model_info.remote().result()
        with httpx.Client(base_url=url, timeout=300) as http:  # its first requests
            for item in five[:2]:
                http.post(
                    "/v1/classify", json={"texts": [item.text], "labels": list(item.labels)}
                ).raise_for_status()
        key = "d64-5" if candidate == default else f"f{i}"
        bench.record(
            key,
            f"(f) HTTP, {top} clients, {candidate.name}",
            bench.precision,
            "5-label",
            online(classifier, lambda: http_run(url, five, top)),
        )
        rows.append(
            {
                "layout": candidate.name,
                "key": key,
                "cpus": shape["cpus"],
                "torch_threads": shape["torch_threads"],
                "forward_workers": shape["forward_workers"],
            }
        )
    c5_half(1)
    return rows


def serve_classifier() -> Any:
    from ray import serve

    return serve.get_deployment_handle("Classifier", app_name=APP)


def check_targets(
    bench: Bench, by_key: dict[str, Any], layout_rows: list[dict[str, Any]], report: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each target of the issues this bench answers, measured and judged."""
    top = max(bench.plan.http_clients)
    best_layout = report["layouts"]["best_pairs_per_s"]
    c5_rate = by_key["c5"]["pairs_per_s"]
    default_rate = by_key["d64-5"]["pairs_per_s"]
    service_rate, a_rate = by_key[f"d{top}"]["pairs_per_s"], by_key["a"]["pairs_per_s"]
    need = 1 if bench.opts.backend == "torch" else 2
    first = report["first_request"]
    warm = statistics.median(first["warm_ms"])
    return [
        {
            "target": "default layout (HTTP, 64 clients, 5 labels) within 10% of the best hand-tuned",
            "measured": f"{default_rate:.2f} / {best_layout:.2f} = {default_rate / best_layout:.0%}",
            "met": default_rate >= 0.9 * best_layout,
        },
        {
            "target": "default layout: at least 85% of (c) on the same pairs",
            "measured": f"{default_rate:.2f} / {c5_rate:.2f} = {default_rate / c5_rate:.0%}",
            "met": default_rate >= 0.85 * c5_rate,
        },
        {
            "target": f"service (HTTP, {top} clients, mixed) vs (a): >= {need}x",
            "measured": f"{service_rate / a_rate:.2f}x",
            "met": service_rate >= need * a_rate,
        },
        *[
            {
                "target": f"{name}: largest score difference vs torch fp32 <= 0.02",
                "measured": f"{b['max_abs_score_diff']:.5f}",
                "met": b["max_abs_score_diff"] <= 0.02,
            }
            for name, b in report["backends"].items()
            if name != "fp32"
        ],
        {
            "target": "first request after ready costs what a warm one costs (within 2x + 50 ms)",
            "measured": f"{first['first_ms']:.0f} ms vs {warm:.0f} ms",
            "met": first["first_ms"] <= 2 * warm + 50,
        },
    ]


def write_report(bench: Bench, report: dict[str, Any]) -> None:
    opts = bench.opts
    opts.out.mkdir(parents=True, exist_ok=True)
    # One file per backend, rewritten by each run: the docs quote it (tests/test_docs.py).
    stem = opts.out / f"service-{opts.backend}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    chart(report, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem}.json, .md and .png")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    load_start = loadavg()

    import ray
    import torch
    from ray import serve

    bench = load(opts)
    log("starting Ray and Serve")
    # One logical CPU more than the cores, so a hand-tuned layout that claims every core still
    # places the ingress; the default layout sizes itself from the cores the process may use.
    with local_serve("zsc-bench", bench.cpus + 1) as url:
        classifier = deploy(bench, Layout("default (num_cpus auto)"))
        first_request = measure_first_request(url, bench.work.mixed[0])
        handle = serve.get_app_handle(APP)
        info = classifier.model_info.remote().result()
        niceness = {
            "driver": os.getpriority(os.PRIO_PROCESS, 0),
            "classifier": descendant_nice(f"ServeReplica:{APP}:Classifier"),
        }
        log(
            f"service up: {info['backend']}, {info['cpus']} CPUs, {info['torch_threads']} "
            f"thread(s) x {info['forward_workers']}, batching {info['batching']}, nice {niceness}"
        )
        backends, sweep, best_bs = measure_backends(bench)
        bs = best_bs[bench.precision]
        idle = measure_idle(bench, url, handle)
        measure_methods(bench, url, handle, classifier, bs)
        layout_rows = measure_layouts(bench, url, bs)

    results = [t.summary(bench.cpus) for t in bench.tallies.values()]
    by_key = {r["key"]: r for r in results}
    for row in layout_rows:
        row["pairs_per_s"] = by_key[row["key"]]["pairs_per_s"]
    default_name = layout_rows[0]["layout"]
    plan = bench.plan
    order = ["a", "b", "c", *[f"d{n}" for n in plan.http_clients], "e", "c5", "d64-5"]
    results.sort(
        key=lambda r: (order.index(r["key"]) if r["key"] in order else len(order), r["key"])
    )
    report: dict[str, Any] = {
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "backend": opts.backend,
        "plan_name": "quick" if opts.quick else "default",
        "plan": asdict(plan),
        "seed": opts.seed,
        "machine": {
            "cpus": bench.cpus,
            "torch": torch.__version__,
            "ray": ray.__version__,
            "python": sys.version.split()[0],
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "niceness": niceness,
        },
        "service": {
            key: info[key]
            for key in ("batching", "cpus", "torch_threads", "forward_workers", "backend")
        },
        "workload": bench.work.description,
        "results": results,
        "backends": backends,
        "score_spread": backends["fp32"]["mean_fp32_score_spread_single_label"],
        "sweep": {
            "backends": list(sweep),
            "batch_sizes": list(plan.batch_sizes),
            "pairs_per_s": {
                k: {str(b): round(v, 3) for b, v in vals.items()} for k, vals in sweep.items()
            },
        },
        "layouts": {
            "rows": layout_rows,
            "best_pairs_per_s": max(
                row["pairs_per_s"] for row in layout_rows if row["layout"] != default_name
            ),
            "c5_pairs_per_s": by_key["c5"]["pairs_per_s"],
        },
        "idle": idle,
        "first_request": first_request,
    }
    report["targets"] = check_targets(bench, by_key, layout_rows, report)
    report["elapsed_s"] = time.monotonic() - started
    write_report(bench, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
