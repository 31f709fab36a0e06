"""zsc against the peers a user could serve an NLI cross-encoder with, side by side in one run.

    .venv/bin/python -m bench.bench_peers [--quick] [--fast-backend int8|onnx|onnx-int8]
    make bench-peers

On the full-size random model (82.1M parameters, built once into .zsc/bench-model) and the
seeded mixed-length workload of `zsc bench` (texts of 10-200 tokens with 2, 5 or 20 labels,
bench/common.py), at 1 and 16 concurrent clients, pairs/s and p50/p99
latency of:

  zsc-default   zsc over HTTP, the default layout (what `make run` deploys), torch fp32;
  zsc-fast      zsc over HTTP, the default layout, its fastest backend (bench/results/int8.json);
  inf-rerank    infinity-emb 0.0.78 on /rerank, serving a one-logit copy of the model whose
                single row is the entailment row: `raw_scores: true` gives the entailment logit
                per (text, hypothesis) pair, and the zero-shot scores follow as the pipeline
                computes them (softmax over the labels' entailment logits);
  inf-classify  infinity-emb 0.0.78 on /classify, the pair joined into one string with the
                tokenizer's separator (`text</s></s>hypothesis` for RoBERTa: the run checks that
                it gives the pair's ids), serving a copy whose config says problem_type
                "regression", so infinity's text-classification pipeline returns raw logits;
  inf-rerank-int8  the same with infinity's `--dtype int8` (torch's dynamic quantisation of the
                Linear layers on its batches as they come: a pair's scores then depend on its
                batch neighbours, which zsc's int8 avoids by running one pair per forward);
  st-crossenc   sentence-transformers `CrossEncoder.predict`, in-process;
  hf-pipeline   transformers' zero-shot pipeline, in-process: also the reference scores.

In-process libraries have no clients: "1 client" is one call per text, one after another, and
"16 clients" is their best case, the whole workload in one call (CrossEncoder.predict over every
pair, batch_size=32, which sorts by length; the pipeline one streaming call per label set,
batch_size=32), which no server sees. "1 client" runs every third text (one at a time is the
slow part), "16 clients" every text. Every contender's scores are checked against the
pipeline's (its batched run, first) before its speed counts; the table records the largest
difference. infinity is installed into its own virtual environment (.zsc/peers-venv, reused;
it pins numpy<2 and transformers<5, which conflict with ours), with torch==2.13.0 first so pip
takes the CPU build, and is started and stopped by this script on a free local port.

Every contender is set up and warm before the first measurement, and all stay up (infinity's
two servers, zsc's two apps, the in-process models): then `--rounds` rounds (3) measure each at
1 and 16 clients in turn, each round starting with the next contender, so a drift in the
machine's load falls on all of them alike. pairs/s is the median round's; p50/p99 are over every
round's requests. The machine may be shared: read the ratios within one run, not absolute
figures across runs. The load average is recorded before and after each measurement.
Writes bench/results/peers.json (with the command, the machine and the versions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    REPO,
    Item,
    add_common_args,
    closed_loop,
    ensure_model,
    hf_tokenizer,
    loadavg,
    local_serve,
    log,
    make_items,
    mixed_counts,
    native_quantize_preset,
    now,
    run_pipeline,
)
from bench.peers import (
    joined_matches_pair,
    one_logit_copy,
    pair_joiner,
    raw_logits_copy,
    single_label_scores,
)
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.devtools.ports import free_port

INFINITY = "infinity-emb[server,torch]==0.0.78"
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk; a plain `torch` pulls CUDA
PEERS_VENV = REPO / ".zsc" / "peers-venv"
PEER_MODELS = REPO / ".zsc" / "peer-models"
PEER_COPY_FORMAT = 2  # bumped when the copies change (portable tokenizer config)
CLIENTS = (1, 16)
BATCH_SIZE = 32  # the in-process libraries' batch size (CrossEncoder.predict's default)
# Largest score difference from the pipeline for a contender's speed to count: fp32 runs the
# same math (padding moves the last bits); int8 is bounded as in `zsc bench`.
TOLERANCE = {"fp32": 1e-4, "int8": 0.02}
FAST_BACKENDS = {  # bench/results/int8.json's summary names -> zsc's backend settings
    "int8": ("int8", {"backend": "int8"}),
    "onnx_fp32": ("onnx", {"backend": "onnx", "onnx_file": "onnx/model.onnx"}),
    "onnx_int8": ("onnx-int8", {"backend": "onnx"}),  # onnx_file: this CPU's quantised file
}


@dataclass(frozen=True)
class Plan:
    """Sized for this 2-core machine: 45 texts (180 pairs; 1 client: 15 texts, 60 pairs) take
    about 2 minutes a round on a quiet machine, 3 rounds and the servers' starts about 7 (the
    first run installs infinity's venv too); under a load average of 30-60, 2-3x longer."""

    texts: int  # 4 pairs per text on average (LABEL_MIX): 15 texts are 60 pairs
    one_client_every: int  # 1 client runs every n-th text


PLANS = {
    "default": Plan(texts=45, one_client_every=3),
    "quick": Plan(texts=15, one_client_every=3),
}


# -- measurement ------------------------------------------------------------------------------


@dataclass
class Measurement:
    contender: str
    clients: int
    pairs: int
    wall_s: float
    latencies_s: list[float]
    errors: int
    loadavg_before: list[float]
    loadavg_after: list[float]


def summarize(rounds: Sequence[Measurement]) -> dict[str, Any]:
    """One contender at one client count over the rounds: the median round's pairs/s (each
    round's too), latency percentiles over every round's requests, the load around each."""
    per_round = [m.pairs / m.wall_s for m in rounds]
    lat = np.asarray([x for m in rounds for x in m.latencies_s] or [np.nan]) * 1000
    return {
        "pairs_per_s": round(float(np.median(per_round)), 3),
        "pairs_per_s_rounds": [round(x, 3) for x in per_round],
        "pairs": rounds[0].pairs,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "requests": sum(len(m.latencies_s) for m in rounds),
        "errors": sum(m.errors for m in rounds),
        "loadavg_1min": [[m.loadavg_before[0], m.loadavg_after[0]] for m in rounds],
    }


@dataclass
class Run:
    items: list[Item]
    one_client_every: int  # 1 client runs every n-th text: one at a time is the slow part
    reference: dict[str, np.ndarray] = field(default_factory=dict)  # text -> pipeline scores
    measurements: list[Measurement] = field(default_factory=list)
    # (contender, clients) -> text -> every round's scores, in the item's label order
    scores: dict[tuple[str, int], dict[str, list[np.ndarray]]] = field(default_factory=dict)

    def workload(self, clients: int) -> list[Item]:
        return self.items if clients > 1 else self.items[:: self.one_client_every]

    def keep(self, contender: str, clients: int, item: Item, scores: Sequence[float]) -> None:
        by_text = self.scores.setdefault((contender, clients), {})
        by_text.setdefault(item.text, []).append(np.asarray(scores, dtype=np.float64))


Scorer = Callable[[Item], Awaitable[list[float]]]
Measure = Callable[[int], None]  # one measurement of a contender at this many clients


os.environ.setdefault("RAY_worker_niceness", "0")  # the replicas at the driver's priority


def measure_online(run: Run, contender: str, score: Scorer, clients: int) -> None:
    """`clients` closed-loop callers over the workload, one text per request."""

    async def send(item: Item) -> bool:
        scores = await score(item)
        run.keep(contender, clients, item, scores)
        return len(scores) == len(item.labels)

    before = loadavg()
    wall, latencies, pairs, errors = asyncio.run(closed_loop(send, run.workload(clients), clients))
    run.measurements.append(
        Measurement(contender, clients, pairs, wall, latencies, errors, before, loadavg())
    )
    log(f"  {contender}, {clients} client(s): {pairs / wall:.2f} pairs/s, {errors} errors")


def measure_offline(
    run: Run,
    contender: str,
    clients: int,
    body: Callable[[list[Item]], tuple[float, list[float], list[list[float]]]],
) -> None:
    """An in-process library: body scores the items and returns (wall, latencies, scores)."""
    items = run.workload(clients)
    before = loadavg()
    wall, latencies, scores = body(items)
    for item, item_scores in zip(items, scores):
        run.keep(contender, clients, item, item_scores)
    pairs = sum(len(i.labels) for i in items)
    run.measurements.append(
        Measurement(contender, clients, pairs, wall, latencies, 0, before, loadavg())
    )
    log(f"  {contender}, {clients} client(s): {pairs / wall:.2f} pairs/s")


# -- contenders -------------------------------------------------------------------------------


def hypotheses(item: Item) -> list[str]:
    return [DEFAULT_TEMPLATE.format(label) for label in item.labels]


def pipeline_contender(run: Run, model_dir: Path) -> Measure:
    """transformers' zero-shot pipeline. Its scores of the batched run (every text) are the
    reference the other contenders are checked against."""
    from transformers import pipeline

    pipe = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    pipe(run.items[0].text, candidate_labels=list(run.items[0].labels))  # first call is slow

    def in_order(item: Item, out: dict[str, Any]) -> list[float]:
        by_label = dict(zip(out["labels"], out["scores"]))
        return [by_label[label] for label in item.labels]

    def offline(items: list[Item]) -> tuple[float, list[float], list[list[float]]]:
        outputs: dict[int, Any] = {}
        wall, latencies = run_pipeline(pipe, items, BATCH_SIZE, outputs)
        scores = [in_order(item, outputs[i]) for i, item in enumerate(items)]
        run.reference.update((i.text, np.asarray(s)) for i, s in zip(items, scores))
        return wall, latencies, scores

    def one_by_one(items: list[Item]) -> tuple[float, list[float], list[list[float]]]:
        latencies, scores = [], []
        started = now()
        for item in items:
            begin = now()
            out = pipe(
                item.text, candidate_labels=list(item.labels), hypothesis_template=DEFAULT_TEMPLATE
            )
            latencies.append(now() - begin)
            scores.append(in_order(item, out))
        return now() - started, latencies, scores

    offline(run.items)  # the reference, before any contender is checked against it
    return lambda clients: measure_offline(
        run, "hf-pipeline", clients, offline if clients > 1 else one_by_one
    )


def cross_encoder_contender(run: Run, model_dir: Path, entailment: int) -> Measure:
    """sentence-transformers' CrossEncoder.predict: logits per pair, scores as the pipeline."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(model_dir), device="cpu", activation_fn=torch.nn.Identity())
    model.predict([(run.items[0].text, "This example is x.")])

    def one_by_one(items: list[Item]) -> tuple[float, list[float], list[list[float]]]:
        latencies, scores = [], []
        started = now()
        for item in items:
            begin = now()
            logits = model.predict(
                [(item.text, h) for h in hypotheses(item)], batch_size=BATCH_SIZE
            )
            latencies.append(now() - begin)
            scores.append(list(single_label_scores(np.asarray(logits)[:, entailment])))
        return now() - started, latencies, scores

    def offline(items: list[Item]) -> tuple[float, list[float], list[list[float]]]:
        pairs = [(item.text, h) for item in items for h in hypotheses(item)]
        started = now()
        logits = np.asarray(model.predict(pairs, batch_size=BATCH_SIZE))
        wall = now() - started
        scores, start = [], 0
        for item in items:
            rows = logits[start : start + len(item.labels), entailment]
            scores.append(list(single_label_scores(rows)))
            start += len(item.labels)
        return wall, [wall] * len(items), scores  # every text is answered when the call returns

    return lambda clients: measure_offline(
        run, "st-crossenc", clients, offline if clients > 1 else one_by_one
    )


def zsc_contender(run: Run, contender: str, url: str) -> Measure:
    """zsc over HTTP: /v1/classify, one text per request, single-label."""
    import httpx

    def scorer(client: httpx.AsyncClient) -> Scorer:
        async def score(item: Item) -> list[float]:
            r = await client.post(
                f"{url}/v1/classify", json={"texts": [item.text], "labels": list(item.labels)}
            )
            r.raise_for_status()
            result = r.json()["results"][0]
            by_label = dict(zip(result["labels"], result["scores"]))
            return [by_label[lb] for lb in item.labels]

        return score

    return lambda clients: measure_online(run, contender, scorer_for(scorer, clients), clients)


def scorer_for(make: Callable[[Any], Scorer], clients: int) -> Scorer:
    """A scorer on an httpx client made inside the event loop that runs it (closed_loop runs in
    asyncio.run, one loop per measurement)."""
    import httpx

    state: dict[str, Any] = {}

    async def score(item: Item) -> list[float]:
        if "client" not in state:
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            state["client"] = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(900.0))
            state["score"] = make(state["client"])
        result: list[float] = await state["score"](item)
        return result

    return score


def infinity_contenders(
    run: Run, url: str, joiner: str, routes: dict[str, str]
) -> dict[str, Measure]:
    """A contender per route ({contender: "rerank" | "classify"}), warmed up by two requests
    each (a process's first forwards are slow)."""
    import httpx

    def rerank(client: httpx.AsyncClient) -> Scorer:
        async def score(item: Item) -> list[float]:
            r = await client.post(
                f"{url}/rerank",
                json={
                    "model": "entail",
                    "query": item.text,
                    "documents": hypotheses(item),
                    "raw_scores": True,
                },
            )
            r.raise_for_status()
            logits = [0.0] * len(item.labels)
            for row in r.json()["results"]:
                logits[row["index"]] = row["relevance_score"]
            return list(single_label_scores(logits))

        return score

    def classify(client: httpx.AsyncClient) -> Scorer:
        async def score(item: Item) -> list[float]:
            joined = [item.text + joiner + h for h in hypotheses(item)]
            r = await client.post(
                f"{url}/classify", json={"model": "nli", "input": joined, "raw_scores": True}
            )
            r.raise_for_status()
            logits = []
            for row in r.json()["data"]:
                by_label = {x["label"]: x["score"] for x in row}
                logits.append(by_label[ENTAILMENT_NAME[0]])
            return list(single_label_scores(logits))

        return score

    makers = {"rerank": rerank, "classify": classify}
    contenders: dict[str, Measure] = {}
    for name, route in routes.items():
        make = makers[route]

        async def warm(make: Callable[[Any], Scorer] = make) -> None:
            async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
                for item in run.items[:2]:
                    await make(client)(item)

        asyncio.run(warm())
        contenders[name] = lambda clients, name=name, make=make: measure_online(
            run, name, scorer_for(make, clients), clients
        )
    return contenders


ENTAILMENT_NAME = ["entailment"]  # set from the model's label map in main
INFINITY_FP32_ROUTES = {"inf-rerank": "rerank", "inf-classify": "classify"}


# -- infinity's venv and server ---------------------------------------------------------------


def ensure_peers_venv(venv: Path) -> Path:
    """infinity in its own venv (built once): torch==2.13.0 first, so pip keeps the CPU build."""
    python = venv / "bin" / "python"
    if (venv / "bin" / "infinity_emb").is_file():
        return python
    log(f"installing {INFINITY} into {venv} (once; a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, INFINITY], check=True)
    return python


def venv_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('infinity_emb', 'torch', 'transformers', 'sentence-transformers', 'numpy')}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


@dataclass
class Infinity:
    """One infinity server on a free local port, serving the two copies; stopped by stop()."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(
        cls, venv: Path, models: dict[str, Path], log_path: Path, dtype: str = "float32"
    ) -> Infinity:
        """Serve each model under its name. dtype "int8" is infinity's CPU quantisation
        (torch.quantization.quantize_dynamic of the Linear layers, batches as they come)."""
        port = free_port()
        args = [str(venv / "bin" / "infinity_emb"), "v2", "--host", "127.0.0.1"]
        args += ["--port", str(port), "--engine", "torch", "--device", "cpu"]
        # No BetterTransformer (optimum is not installed) and no built-in warm-up (it runs
        # 32 x 512-token batches, minutes here): infinity_contenders warms each route up itself.
        args += ["--no-bettertransformer", "--no-model-warmup"]
        for name, path in models.items():
            args += ["--model-id", str(path), "--served-model-name", name, "--dtype", dtype]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        env.pop("PYTHONPATH", None)
        handle = log_path.open("wb")
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        server = cls(process, f"http://127.0.0.1:{port}", log_path)
        server.wait_ready()
        return server

    def wait_ready(self, timeout_s: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"infinity exited; its log: {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"infinity not ready in {timeout_s} s; its log: {self.log_path}")

    def stop(self) -> None:
        """SIGTERM to the server's own process group (it started its session), then SIGKILL."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# -- zsc ----------------------------------------------------------------------------------------


def deploy_zsc(model_dir: Path, name: str, settings: dict[str, str]) -> None:
    """An app under /NAME: the default layout (no CPU or thread setting), jobs off (no store to
    write). Both of the run's apps are up at once, so Ray is given logical CPUs for two."""
    from ray import serve

    from serve_app.app import build_app

    args = {"model": str(model_dir), **settings, "jobs": {"enabled": False}}
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def zsc_warm(url: str, items: Sequence[Item]) -> None:
    import httpx

    with httpx.Client(timeout=300) as http:
        for item in items[:2]:
            body = {"texts": [item.text], "labels": list(item.labels)}
            http.post(f"{url}/v1/classify", json=body).raise_for_status()


def fastest_backend() -> str:
    """The fastest backend of bench/results/int8.json (ratio to torch fp32, same run)."""
    data = json.loads((DEFAULT_OUT / "int8.json").read_text())["summary"]
    return max((k for k in FAST_BACKENDS if k in data), key=lambda k: data[k]["ratio_to_fp32"])


def ensure_onnx(model_dir: Path) -> str:
    """The model's ONNX files (fp32, and int8 for this CPU), exported once: the int8 file."""
    from serve_app.engine.export import export_onnx, quantize_onnx, quantized_file

    preset = native_quantize_preset()
    if not (model_dir / "onnx" / "model.onnx").is_file():
        log("exporting the model to ONNX (once)")
        export_onnx(model_dir)
    if not (model_dir / "onnx" / quantized_file(preset)).is_file():
        log(f"quantising the ONNX model for {preset} (once)")
        quantize_onnx(model_dir, preset)
    return f"onnx/{quantized_file(preset)}"


# -- report -----------------------------------------------------------------------------------

CONTENDERS = {
    "zsc-default": ("zsc over HTTP, default layout", "torch fp32"),
    "zsc-fast": ("zsc over HTTP, default layout, fastest backend", ""),
    "inf-rerank": ("infinity 0.0.78 /rerank, one-logit entailment copy", "torch fp32"),
    "inf-classify": ("infinity 0.0.78 /classify, joined pairs", "torch fp32"),
    "inf-rerank-int8": (
        "infinity 0.0.78 /rerank, one-logit entailment copy, --dtype int8",
        "torch int8 (dynamic, batched)",
    ),
    "st-crossenc": ("sentence-transformers CrossEncoder.predict, in-process", "torch fp32"),
    "hf-pipeline": ("transformers zero-shot pipeline, in-process", "torch fp32"),
}


def score_check(run: Run, contender: str, clients: int, precision: str) -> dict[str, Any]:
    """The largest difference of a contender's scores from the pipeline's, and whether its speed
    counts: every text of its workload answered, within the tolerance of its precision."""
    got = run.scores.get((contender, clients), {})
    items = run.workload(clients)
    diff = max(
        (
            float(np.abs(scores - run.reference[i.text]).max())
            for i in items
            for scores in got.get(i.text, [])
        ),
        default=float("nan"),
    )
    tolerance = TOLERANCE["int8" if "int8" in precision else "fp32"]
    answered = all(i.text in got for i in items)
    return {
        "max_abs_score_diff": diff,
        "tolerance": tolerance,
        "texts_checked": len(got),
        "counts": answered and diff <= tolerance,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"{m['cpus']} CPUs, load average {m['loadavg_start']} at start, {m['loadavg_end']} at "
        f"end. Workload: {report['workload']['texts']} texts, {report['workload']['pairs']} pairs.",
        "",
        "| contender | backend | clients | pairs/s | p50 ms | p99 ms | zsc-default vs it | "
        "zsc-fast vs it | largest score diff | counts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["results"].values():
        for clients in map(str, CLIENTS):
            r = row[clients]
            zd = report["results"]["zsc-default"][clients]["pairs_per_s"]
            zf = report["results"]["zsc-fast"][clients]["pairs_per_s"]
            lines.append(
                f"| {row['name']} | {row['backend']} | {clients} | {r['pairs_per_s']:.2f} | "
                f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {zd / r['pairs_per_s']:.2f}x | "
                f"{zf / r['pairs_per_s']:.2f}x | {r['check']['max_abs_score_diff']:.2g} | "
                f"{'yes' if r['check']['counts'] else 'NO'} |"
            )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15 texts, one round: a smoke run.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="Rounds of every contender in turn, each round starting one later (default 3; "
        "1 with --quick). pairs/s is the median of the rounds.",
    )
    parser.add_argument(
        "--fast-backend",
        choices=sorted(FAST_BACKENDS),
        default=None,
        help="zsc's fast contender (default: the fastest in bench/results/int8.json).",
    )
    add_common_args(parser, DEFAULT_OUT / "peers.json", "peers.json")
    parser.add_argument("--venv", type=Path, default=PEERS_VENV)
    opts = parser.parse_args(argv)
    if opts.rounds is None:
        opts.rounds = 1 if opts.quick else 3
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    plan = PLANS["quick" if opts.quick else "default"]
    model_dir = ensure_model(opts.model_dir.resolve())
    python = ensure_peers_venv(opts.venv.resolve())

    import ray
    import sentence_transformers
    import torch
    import transformers

    from serve_app.core.nli import nli_label_indices

    config = json.loads((model_dir / "config.json").read_text())
    indices = nli_label_indices({int(k): v for k, v in config["id2label"].items()})
    ENTAILMENT_NAME[0] = config["id2label"][str(indices.entailment)]
    fast_name = opts.fast_backend or fastest_backend()
    fast_label, fast_settings = FAST_BACKENDS[fast_name]
    fast_settings = dict(fast_settings)
    if fast_label.startswith("onnx"):
        onnx_file = ensure_onnx(model_dir)
        if fast_label == "onnx-int8":
            fast_settings["onnx_file"] = onnx_file

    tokenizer = hf_tokenizer(model_dir)
    items = make_items(tokenizer, mixed_counts(plan.texts, opts.seed), seed=opts.seed)
    joiner = pair_joiner(tokenizer)
    joined_ok = all(
        joined_matches_pair(tokenizer, i.text, h, joiner) for i in items for h in hypotheses(i)
    )
    log(f"workload: {len(items)} texts; joined pairs ({joiner!r}) give the pair's ids: {joined_ok}")
    entail_dir = PEER_MODELS / "entailment-one-logit"
    nli_dir = PEER_MODELS / "raw-logits"
    # Rebuilt when the model or the way the copies are made changes.
    stamp = f"{(model_dir / 'model.safetensors').stat().st_mtime}:{PEER_COPY_FORMAT}"
    for d, build in (
        (entail_dir, lambda: one_logit_copy(model_dir, entail_dir, indices.entailment)),
        (nli_dir, lambda: raw_logits_copy(model_dir, nli_dir)),
    ):
        if (d / "source-stamp").is_file() and (d / "source-stamp").read_text() == stamp:
            continue
        shutil.rmtree(d, ignore_errors=True)
        build()
        (d / "source-stamp").write_text(stamp)

    run = Run(items, plan.one_client_every)
    load_start = loadavg()
    cpus = os.cpu_count() or 1
    venv = opts.venv.resolve()
    with contextlib.ExitStack() as stack:
        # Every contender is set up and warm before the first measurement: the rounds then
        # interleave them, so a drift in the machine's load falls on all of them alike.
        log("in-process peers")
        contenders = {
            "hf-pipeline": pipeline_contender(run, model_dir),
            "st-crossenc": cross_encoder_contender(run, model_dir, indices.entailment),
        }
        for dtype, models, routes in (
            ("float32", {"entail": entail_dir, "nli": nli_dir}, INFINITY_FP32_ROUTES),
            ("int8", {"entail": entail_dir}, {"inf-rerank-int8": "rerank"}),
        ):
            log(f"starting infinity ({dtype})")
            server = Infinity.start(venv, models, REPO / ".zsc" / f"infinity-{dtype}.log", dtype)
            stack.callback(server.stop)
            contenders.update(infinity_contenders(run, server.url, joiner, routes))
        log("starting Ray and Serve")
        url = stack.enter_context(local_serve("zsc-bench-peers", 2 * cpus + 1))
        for contender, settings in (
            ("zsc-default", {"backend": "torch"}),
            ("zsc-fast", fast_settings),
        ):
            deploy_zsc(model_dir, contender, settings)
            zsc_warm(f"{url}/{contender}", items)
            contenders[contender] = zsc_contender(run, contender, f"{url}/{contender}")
        names = list(CONTENDERS)  # every contender is set up above, in the table's order
        for round_ in range(opts.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            log(f"round {round_ + 1} of {opts.rounds}: {', '.join(order)}")
            for name in order:
                for clients in CLIENTS:
                    contenders[name](clients)

    precisions = {k: b for k, (_, b) in CONTENDERS.items()}
    precisions["zsc-fast"] = fast_label
    results: dict[str, Any] = {
        name: {"name": label, "backend": precisions[name]}
        for name, (label, _) in CONTENDERS.items()
    }
    for name, row in results.items():
        for clients in CLIENTS:
            rounds = [m for m in run.measurements if (m.contender, m.clients) == (name, clients)]
            row[str(clients)] = {
                **summarize(rounds),
                "check": score_check(run, name, clients, precisions[name]),
            }
    ratios = {
        zsc: {
            peer: {
                str(c): round(
                    results[zsc][str(c)]["pairs_per_s"] / results[peer][str(c)]["pairs_per_s"], 2
                )
                for c in CLIENTS
            }
            for peer in CONTENDERS
            if not peer.startswith("zsc")
        }
        for zsc in ("zsc-default", "zsc-fast")
    }
    report: dict[str, Any] = {
        "command": "python -m bench.bench_peers "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "plan": "quick" if opts.quick else "default",
        "rounds": opts.rounds,
        "seed": opts.seed,
        "machine": {
            "cpus": cpus,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "python": sys.version.split()[0],
        },
        "versions": {
            "zsc_venv": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence-transformers": sentence_transformers.__version__,
                "ray": ray.__version__,
            },
            "peers_venv": venv_versions(python),
        },
        "workload": {
            "texts": len(items),
            "pairs": sum(len(i.labels) for i in items),
            "texts_per_label_count": {
                str(k): sum(len(i.labels) == k for i in items) for k in (2, 5, 20)
            },
            "text_tokens": {
                "min": min(i.tokens for i in items),
                "mean": round(float(np.mean([i.tokens for i in items])), 1),
                "max": max(i.tokens for i in items),
            },
        },
        "one_client": {
            "texts": len(run.workload(1)),
            "pairs": sum(len(i.labels) for i in run.workload(1)),
        },
        "joined_pairs": {"joiner": joiner, "same_ids_as_pair": joined_ok},
        "zsc_fast_backend": fast_label,
        "results": results,
        "zsc_vs_peer": ratios,
    }
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"wrote {opts.out} in {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
