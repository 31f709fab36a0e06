"""zsc against its peers and against the hardware's limit, side by side in one run.

    .venv/bin/python bench/bench.py [--quick] [--backend torch|int8] [--out bench/results]
    zsc bench [--quick] [--backend torch|int8] [--out bench/results]

On the full-size random model (82.1M parameters, the real model's cost; built once into
.zsc/bench-model), over a seeded workload of texts of 10-200 tokens with 2, 5 or 20 labels (one
fixed label set per count, as a caller classifying many texts against its own labels; each label
count brings a third of the pairs):

  (a) ThreadPoolExecutor(max_workers=4), one forward per text (its labels as one small, unsorted
      batch): the approach this project grew from. Always fp32.
  (b) transformers' zero-shot pipeline, batch_size=32, one streaming call per label set. fp32.
  (c) a raw batched forward of the chosen backend over length-sorted pairs, at the best batch size
      of a sweep (8/16/32/64): the limit for the serving path.
  (d) the service over HTTP (real sockets, httpx async), 16 and 64 concurrent clients, one text
      per request; and 64 clients on a 5-label-only workload (the issue's HTTP target), measured
      between two halves of (c) on the same pairs.
  (e) the service through a DeploymentHandle, 16 concurrent callers.
Also: the int8 backend's speedup over fp32 on (c) (from the sweep) and its largest score
difference from fp32; an idle request (1 text, 5 labels) against one forward of its pairs.

The machine may be shared. So the main workload runs in rounds, each method doing a slice of it
per round in rotating order, and pairs/s is the median over rounds; every process (driver and Ray
workers) runs at one CPU priority; and each run records the CPU time its whole process tree used:
"CPU share" is the part of the machine's cores it got, "CPU-norm" its pairs per CPU-second times
the cores (what it would do with the cores to itself, if it kept them busy). Compare ratios within
one run, not absolute figures across runs.

Latency means two things. For (d) and (e): a request's end-to-end time under load (closed loop:
each client sends its next request when the last is answered). For (a): one text's forward; for
(b) and (c): from the moment the batch job takes up a text until its scores are ready.

Writes bench-<backend>-<time>.json, .md and .png to the out directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its workers (Serve replicas included) at nice 15 by default, below this driver,
# where (a)-(c) run. On a machine shared with other work that alone would hand the baselines
# more CPU than the service: run everything at the same priority.
os.environ.setdefault("RAY_worker_niceness", "0")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from serve_app.core.defaults import DEFAULT_TEMPLATE  # noqa: E402
if TYPE_CHECKING:  # serve_app.model imports torch: not at import time (client processes)
    from serve_app.model import Pair

APP = "zsc"
DEFAULT_MODEL_DIR = REPO / ".zsc" / "bench-model"
DEFAULT_OUT = REPO / "bench" / "results"
UNBOUNDED = 10**9  # a token budget that never splits a batch: (a) and (c) choose their batches
MIN_TOKENS, MAX_TOKENS = 10, 200
# Per 15 texts: ten with 2 labels, four with 5, one with 20: each count brings 20 of 60 pairs.
LABEL_MIX = (2,) * 10 + (5,) * 4 + (20,)
LABEL_COUNTS = (2, 5, 20)

# Ordinary English words; each becomes one or a few tokens of the test tokenizer.
WORDS = """
the a of and to in is was for on that with as by at from it be this are have which or an not
but were they had one all their there been has more when who will would new can if about so
time people year way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye
job word business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back parent
face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education phone battery camera picture bank rate
inflation market price stock earnings championship penalty final match player coach season
frog rainforest species expedition order package refund recipe flour eggs salt butter rain
wind coast mountain hospital road hotel staff breakfast software update performance mode film
review music subscription support election vote flight airport museum exhibition painter
engineer electric charge quick brown fox jumps lazy dog weather travel food science sport
""".split()

LABELS = """
sports politics technology business health science travel food music movies weather finance
education entertainment crime environment religion fashion art history law military economy
energy transport agriculture housing employment insurance retail gaming space medicine
family relationships parenting pets cars real-estate urgent complaint praise question
""".split()


# -- plan and workload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does. Sized on an idle 2-core machine (DESIGN.md §5:
    ~13 pairs/s fp32 on these lengths) to take about 8 minutes (default) or under 2 (quick)."""

    mixed_texts: int  # the main workload, split into `rounds` slices
    rounds: int
    five_label_texts: int  # the 5-label-only workload of the HTTP-64 target
    sweep_texts: int  # a subset of the main workload for the batch-size sweep (two passes)
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    idle_repeats: int = 8
    http_clients: tuple[int, ...] = (16, 64)
    handle_callers: int = 16
    pool_workers: int = 4
    pipeline_batch_size: int = 32


PLANS = {
    "default": Plan(mixed_texts=135, rounds=3, five_label_texts=72, sweep_texts=15),
    "quick": Plan(mixed_texts=15, rounds=1, five_label_texts=12, sweep_texts=5, idle_repeats=3),
}


@dataclass(frozen=True)
class Item:
    text: str
    labels: tuple[str, ...]
    tokens: int  # the text's own tokens (no specials, no hypothesis)


def label_sets() -> dict[int, tuple[str, ...]]:
    rng = random.Random(7)
    return {k: tuple(rng.sample(LABELS, k)) for k in LABEL_COUNTS}


def make_items(tokenizer: Any, counts: Sequence[int], seed: int) -> list[Item]:
    """Texts of a uniformly drawn length in [MIN_TOKENS, MAX_TOKENS] tokens, each with the
    fixed label set of its label count. Deterministic for a seed; no two texts alike."""
    rng = random.Random(seed)
    sets = label_sets()
    # Byte-level BPE splits on spaces first, so a text's length is the sum of its words'.
    word_tokens = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    items = []
    for k in counts:
        target, words, n = rng.randint(MIN_TOKENS, MAX_TOKENS), [], 0
        while n < target:
            word = rng.choice(WORDS)
            words.append(word)
            n += word_tokens[word]
        text = " ".join(words)
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        items.append(Item(text=text, labels=sets[k], tokens=tokens))
    return items


def mixed_counts(n: int, seed: int) -> list[int]:
    counts = [LABEL_MIX[i % len(LABEL_MIX)] for i in range(n)]
    random.Random(seed).shuffle(counts)
    return counts


def describe_workload(items: Sequence[Item], pairs: Sequence[Sequence[Pair]]) -> dict[str, Any]:
    flat = [len(p[0]) for ps in pairs for p in ps]
    return {
        "texts": len(items),
        "pairs": len(flat),
        "texts_per_label_count": {str(k): sum(len(i.labels) == k for i in items) for k in LABEL_COUNTS},
        "text_tokens": {
            "min": min(i.tokens for i in items),
            "mean": round(float(np.mean([i.tokens for i in items])), 1),
            "max": max(i.tokens for i in items),
        },
        "pair_tokens_mean": round(float(np.mean(flat)), 1),
    }


# -- CPU accounting -----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by this process and all its descendants: the driver, and the
    Ray processes it started (GCS, raylet, Serve's controller, proxy and replicas)."""
    root = root or os.getpid()
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(p.name))}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def descendant_nice(pattern: str) -> list[int]:
    """Niceness of this process's descendants whose command line contains pattern."""
    found = []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if pattern not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            pid = int(proc.name)
            while pid > 1:  # walk up to see whether it is one of ours
                st = _stat(str(pid))
                if st is None:
                    break
                pid = st[0]
                if pid == me:
                    found.append(os.getpriority(os.PRIO_PROCESS, int(proc.name)))
                    break
        except OSError:
            continue
    return found


# -- measurements -------------------------------------------------------------------------------


@dataclass
class Round:
    pairs: int
    wall_s: float
    cpu_s: float
    latencies_s: list[float]
    errors: int = 0
    batches: dict[str, Any] | None = None

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s


@dataclass
class Tally:
    """One method's figures over its rounds."""

    key: str
    name: str
    backend: str
    workload: str
    rounds: list[Round] = field(default_factory=list)

    def summary(self, cpus: int) -> dict[str, Any]:
        lat = np.asarray([x for r in self.rounds for x in r.latencies_s]) * 1000
        if not lat.size:
            lat = np.asarray([np.nan])
        wall = sum(r.wall_s for r in self.rounds)
        cpu = sum(r.cpu_s for r in self.rounds)
        out: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            "backend": self.backend,
            "workload": self.workload,
            "pairs": sum(r.pairs for r in self.rounds),
            "wall_s": round(wall, 2),
            # The median over rounds: robust to one round hit by someone else's burst.
            "pairs_per_s": round(statistics.median(r.pairs_per_s for r in self.rounds), 3),
            "pairs_per_s_rounds": [round(r.pairs_per_s, 3) for r in self.rounds],
            "cpu_share": round(cpu / (wall * cpus), 3),
            "cpu_norm_pairs_per_s": round(
                statistics.median(r.pairs / (r.cpu_s / cpus) for r in self.rounds if r.cpu_s > 0), 3
            ) if cpu > 0 else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "requests": int(sum(len(r.latencies_s) for r in self.rounds)),
            "errors": sum(r.errors for r in self.rounds),
        }
        batches = [r.batches for r in self.rounds if r.batches and r.batches["batches"]]
        if batches:
            n = sum(b["batches"] for b in batches)
            out["batches"] = n
            out["mean_pairs_per_batch"] = round(
                sum(b["mean_pairs_per_batch"] * b["batches"] for b in batches) / n, 2)
            out["mean_calls_per_batch"] = round(
                sum(b["mean_calls_per_batch"] * b["batches"] for b in batches) / n, 2)
        return out


def now() -> float:
    return time.perf_counter()


def use_threads(n: int) -> None:
    """torch's intra-op thread count is one per process: set it for the method about to run
    (the serving layout runs 1 thread per sub-batch; the baselines run torch's default)."""
    import torch

    torch.set_num_threads(n)


def raw_forward(
    model: Any, pairs: Sequence[Sequence[Pair]], batch_size: int
) -> tuple[float, list[float], list[np.ndarray]]:
    """(c): every pair, sorted by length, in batches of batch_size. Returns the wall time, each
    text's latency (first batch holding one of its pairs starts -> its last one ends) and each
    text's logits."""
    flat = sorted(
        ((len(p[0]), t, j) for t, ps in enumerate(pairs) for j, p in enumerate(ps)),
        key=lambda x: x[0],
    )
    use_threads(model.threads)
    logits = [np.empty((len(ps), len(model.id2label)), dtype=np.float32) for ps in pairs]
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    started = now()
    for i in range(0, len(flat), batch_size):
        chunk = flat[i : i + batch_size]
        begin = now()
        # One padded batch exactly as given (the chunk is already sorted; nothing repeats).
        out = model.forward([pairs[t][j] for _, t, j in chunk], max_batch_tokens=UNBOUNDED)
        end = now()
        for row, (_, t, j) in enumerate(chunk):
            logits[t][j] = out[row]
            first.setdefault(t, begin)
            last[t] = end
    wall = now() - started
    return wall, [last[t] - first[t] for t in range(len(pairs))], logits


def batch_size_sweep(
    models: dict[str, Any], pairs: Sequence[Sequence[Pair]], batch_sizes: Sequence[int]
) -> tuple[dict[str, dict[int, float]], dict[str, list[np.ndarray]]]:
    """(c)'s batch-size sweep: pairs/s per model and batch size, and each model's logits.

    The models are interleaved, ascending then descending batch sizes, so drift in the
    machine's load hits every setting alike."""
    walls: dict[str, dict[int, float]] = {name: defaultdict(float) for name in models}
    logits_by_model: dict[str, list[np.ndarray]] = {}
    for order in (batch_sizes, batch_sizes[::-1]):
        for bs in order:
            for name, model in models.items():
                wall, _, logits = raw_forward(model, pairs, bs)
                walls[name][bs] += wall
                logits_by_model.setdefault(name, logits)
    n_pairs = sum(map(len, pairs))
    pairs_per_s = {name: {bs: 2 * n_pairs / w for bs, w in by_bs.items()} for name, by_bs in walls.items()}
    return pairs_per_s, logits_by_model


def thread_pool(model: Any, pairs: Sequence[Sequence[Pair]], workers: int) -> tuple[float, list[float]]:
    """(a): one forward per text, its labels as one small batch, in a pool of threads.
    Texts are tokenized beforehand (fast tokenizers are not thread-safe), which favours (a)."""

    def one(text_pairs: Sequence[Pair]) -> float:
        begin = now()
        model.forward(text_pairs, max_batch_tokens=UNBOUNDED)
        return now() - begin

    use_threads(model.threads)

    started = now()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        latencies = list(pool.map(one, pairs))
    return now() - started, latencies


def run_pipeline(pipe: Any, items: Sequence[Item], batch_size: int) -> tuple[float, list[float]]:
    """(b): the transformers pipeline, one streaming call per label set (it batches pairs across
    the texts that share labels). Latency: the pipeline takes up a text -> its result comes out."""
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[item.labels].append(i)
    taken: dict[int, float] = {}
    latencies = []
    use_threads(os.cpu_count() or 1)  # the pipeline as users run it: torch's default threads
    started = now()
    for labels, indices in groups.items():

        def texts(indices: list[int] = indices):
            for i in indices:
                taken[i] = now()
                yield items[i].text

        outputs = pipe(
            texts(), candidate_labels=list(labels), hypothesis_template=DEFAULT_TEMPLATE,
            batch_size=batch_size,
        )
        for i, _ in zip(indices, outputs):
            latencies.append(now() - taken[i])
    return now() - started, latencies


async def closed_loop(
    send: Callable[[Item], Awaitable[bool]], items: Iterable[Item], clients: int
) -> tuple[float, list[float], int, int]:
    """`clients` callers share the workload; each sends its next request when answered.
    Returns wall time, latencies of the answered requests, pairs answered, and errors."""
    queue = iter(items)
    latencies: list[float] = []
    answered_pairs = 0
    errors = 0

    async def client() -> None:
        nonlocal answered_pairs, errors
        for item in queue:  # one shared iterator: each item goes to exactly one client
            begin = now()
            try:
                ok = await send(item)
            except Exception as exc:  # count it; one failure should not void the whole run
                log(f"    request failed: {type(exc).__name__}: {exc}")
                ok = False
            if ok:
                latencies.append(now() - begin)
                answered_pairs += len(item.labels)
            else:
                errors += 1

    started = now()
    await asyncio.gather(*(client() for _ in range(clients)))
    return now() - started, latencies, answered_pairs, errors


async def http_run(url: str, items: Iterable[Item], clients: int) -> tuple[float, list[float], int, int]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(900.0)) as http:

        async def send(item: Item) -> bool:
            response = await http.post(
                "/v1/classify", json={"texts": [item.text], "labels": list(item.labels)}
            )
            if response.status_code != 200:
                log(f"    HTTP {response.status_code}: {response.text[:200]}")
                return False
            return len(response.json()["results"][0]["scores"]) == len(item.labels)

        return await closed_loop(send, items, clients)


async def handle_run(handle: Any, items: Sequence[Item], callers: int) -> tuple[float, list[float], int, int]:
    async def send(item: Item) -> bool:
        body = await handle.classify.remote(texts=[item.text], labels=list(item.labels))
        return len(body["results"][0]["scores"]) == len(item.labels)

    return await closed_loop(send, items, callers)


# -- helpers ------------------------------------------------------------------------------------

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model(model_dir: Path, full_size: bool = True) -> Path:
    """The random model (full-size by default, else the tiny test one), built once (about 30 s
    full-size) and reused."""
    if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
        return model_dir
    from serve_app.devtools.test_models import build_test_model

    log(f"building the {'full-size' if full_size else 'tiny'} random model into {model_dir} (once)")
    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_test_model(partial, full_size=full_size)
    shutil.rmtree(model_dir, ignore_errors=True)
    partial.rename(model_dir)  # only a finished model ever sits at model_dir
    return model_dir


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def max_score_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], indices: Any) -> dict[str, float]:
    """Largest |score| difference between two backends' logits, single- and multi-label."""
    from serve_app.core.nli import label_scores

    worst = {"single_label": 0.0, "multi_label": 0.0}
    spread = []
    max_logit = 0.0
    for la, lb in zip(a, b):
        max_logit = max(max_logit, float(np.abs(la - lb).max()))
        for mode, multi in (("single_label", False), ("multi_label", True)):
            sa, sb = label_scores(la, indices, multi), label_scores(lb, indices, multi)
            worst[mode] = max(worst[mode], float(np.abs(sa - sb).max()))
        s = label_scores(la, indices, False)
        spread.append(float(s.max() - s.min()))
    return {
        "max_abs_score_diff": max(worst.values()),
        **{f"max_abs_score_diff_{k}": v for k, v in worst.items()},
        "max_abs_logit_diff": max_logit,
        # Random weights give near-uniform scores; this says how far the scores spread at all.
        "mean_fp32_score_spread_single_label": float(np.mean(spread)),
    }


# -- report -------------------------------------------------------------------------------------


def ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}x" if x and y else "—"


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    by_key = {r["key"]: r for r in rows}
    a = by_key.get("a")
    m, w = report["machine"], report["workload"]
    lines = [
        f"# zsc bench — {report['backend']} backend, {report['plan_name']} run",
        "",
        f"{m['cpus']} CPUs, torch {m['torch']}, Ray {m['ray']}. Load average {m['loadavg_start']} "
        f"at start, {m['loadavg_end']} at end: **a machine shared with other work, so figures are "
        f"medians over {report['plan']['rounds']} interleaved round(s) and the ratios within this run "
        "are what to compare**, not absolute figures across runs. Model: full-size random "
        f"(82.1M parameters). Main workload: {w['mixed']['texts']} texts, {w['mixed']['pairs']} pairs "
        f"(texts per label count {w['mixed']['texts_per_label_count']}), text tokens "
        f"{w['mixed']['text_tokens']}; 5-label workload: {w['five_label']['texts']} texts, "
        f"{w['five_label']['pairs']} pairs. Service: one Classifier replica, "
        f"{report['service']['classifier_num_cpus']} CPUs / {report['service']['torch_threads']} torch "
        f"thread(s) x {report['service'].get('forward_workers')} sub-batches at once, batching {report['service']['batching']}; ingress {report['service']['ingress_num_cpus']} CPU.",
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
            f"{ratio(r['pairs_per_s'], a['pairs_per_s']) if same_as_a else '—'} | "
            f"{r['cpu_share']:.0%} | {r['cpu_norm_pairs_per_s'] or 0:.2f} | "
            f"{ratio(r['cpu_norm_pairs_per_s'], c and c['cpu_norm_pairs_per_s'])} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {f'{batch:.1f}' if batch else '—'} |"
        )
    lines += [
        "",
        "pairs/s: median over rounds of pairs / wall time. CPU share: CPU time of the bench's whole "
        "process tree (driver + its Ray processes) / (wall time x cores). CPU-norm: pairs per CPU "
        "second x cores. Latency: (d)/(e) a request's end-to-end time under load (closed loop); (a) "
        "one text's forward; (b)/(c) from the moment the batch job took up a text to its scores. "
        "pairs/batch: mean pairs per Classifier model batch (cross-request batching).",
        "",
        "Batch-size sweep for (c) (pairs/s, a subset of the main workload, two passes):",
        "",
        "| batch size | " + " | ".join(report["sweep"]["backends"]) + " |",
        "|---:|" + "---:|" * len(report["sweep"]["backends"]),
    ]
    for bs in report["sweep"]["batch_sizes"]:
        cells = [f"{report['sweep']['pairs_per_s'][b][str(bs)]:.2f}" for b in report["sweep"]["backends"]]
        lines.append(f"| {bs} | " + " | ".join(cells) + " |")
    q, idle = report["int8"], report["idle"]
    lines += [
        "",
        f"int8 vs fp32 on (c), best batch size each ({q['best_batch_size']}): **{q['speedup']:.2f}x**; "
        f"largest score difference {q['max_abs_score_diff']:.5f} (single-label "
        f"{q['max_abs_score_diff_single_label']:.5f}, multi-label {q['max_abs_score_diff_multi_label']:.5f}; "
        f"largest logit difference {q['max_abs_logit_diff']:.4f}). Caveat: random weights make "
        f"near-uniform scores (single-label scores spread by {q['mean_fp32_score_spread_single_label']:.4f} "
        "on average), so the deviation on a trained model can be larger.",
        "",
        f"Idle, 1 text ({idle['text_tokens']} tokens) x 5 labels, median of {idle['repeats']}: one "
        f"forward {idle['forward_ms']:.1f} ms; HTTP {idle['http_ms']:.1f} ms "
        f"({idle['http_overhead_ms']:+.1f}); handle {idle['handle_ms']:.1f} ms "
        f"({idle['handle_overhead_ms']:+.1f}). Under a loaded machine each hop waits for a core, "
        "so this overhead is an upper bound.",
        "",
        "| target (issue 8) | measured | verdict |",
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
    colors = ["#9aa5b1" if r["key"] in ("a", "b") else "#3b7dd8" if r["key"].startswith("c") else "#e07b39"
              for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(rows) + 1.8), sharey=True)
    for ax, field_name, title in (
        (axes[0], "pairs_per_s", "pairs/s (median over rounds)"),
        (axes[1], "cpu_norm_pairs_per_s", "CPU-normalized pairs/s"),
    ):
        values = [r[field_name] or 0 for r in rows]
        ax.barh(y, values, color=colors)
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:.1f}", va="center", fontsize=8)
        c = next((r for r in rows if r["key"] == "c"), None)
        if c and c[field_name]:
            ax.axvline(c[field_name], ls="--", color="#3b7dd8", lw=1)
        ax.set_xlabel(title)
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(
        f"zsc bench — {report['backend']} backend, full-size model, {report['machine']['cpus']} CPUs, "
        "shared machine (grey: peers, blue: raw limit (c), orange: service)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A small run (under 2 minutes) to check the bench works.")
    parser.add_argument("--backend", choices=("torch", "int8"), default="torch",
                        help="Backend of (c), (d) and (e); (a) and (b) are always fp32.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write JSON, Markdown and PNG.")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="The full-size random model (built here when missing).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the workload.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    plan_name = "quick" if opts.quick else "default"
    plan = PLANS[plan_name]
    started = time.monotonic()
    cpus = os.cpu_count() or 1
    precision = {"torch": "fp32", "int8": "int8"}[opts.backend]
    load_start = loadavg()

    import torch
    from transformers import pipeline

    from serve_app.config import ModelConfig
    from serve_app.model import NLIModel

    torch.set_num_threads(cpus)
    model_dir = ensure_model(opts.model_dir.resolve())
    # The serving path's models use the service's default thread layout (serve_app.model.
    # thread_plan: 1 torch thread per sub-batch, one sub-batch per CPU); (a) runs as the project
    # began, torch's default threads (one forward using every core) in a pool of 4 threads; the
    # sweep also times that one-forward-on-every-core layout, the comparison behind the default.
    models = {
        "fp32": NLIModel(ModelConfig(model=str(model_dir), backend="torch")),
        "int8": NLIModel(ModelConfig(model=str(model_dir), backend="int8")),
    }
    fp32, chosen = models["fp32"], models[precision]
    baseline = NLIModel(ModelConfig(model=str(model_dir), backend="torch", torch_threads=cpus, forward_workers=1))
    layout = f"{chosen.threads} thread x {chosen.workers}"
    log(f"loaded fp32 and int8 models in the driver: {layout} sub-batches at once; baseline {cpus} threads x 1")

    mixed = make_items(fp32.tokenizer, mixed_counts(plan.mixed_texts, opts.seed), seed=opts.seed)
    five = make_items(fp32.tokenizer, [5] * plan.five_label_texts, seed=opts.seed + 1)

    def encode(items: Sequence[Item]) -> list[list[Pair]]:
        return [fp32.encode([i.text], list(i.labels), DEFAULT_TEMPLATE).pairs for i in items]

    mixed_pairs, five_pairs = encode(mixed), encode(five)
    step = max(1, len(mixed) // plan.sweep_texts)
    sweep_items, sweep_pairs = mixed[::step][: plan.sweep_texts], mixed_pairs[::step][: plan.sweep_texts]
    workload = {
        "mixed": describe_workload(mixed, mixed_pairs),
        "five_label": describe_workload(five, five_pairs),
        "sweep": describe_workload(sweep_items, sweep_pairs),
    }
    log(f"workload: {workload['mixed']['texts']} texts / {workload['mixed']['pairs']} pairs mixed, "
        f"{workload['five_label']['pairs']} pairs 5-label, sweep {workload['sweep']['pairs']} pairs")
    pipe = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    # First forwards of a process are slow: keep them out of the figures.
    for m in [*models.values(), baseline]:
        use_threads(m.threads)
        m.forward([p for ps in sweep_pairs[:2] for p in ps][:8])
    pipe(mixed[0].text, candidate_labels=list(mixed[0].labels))

    import httpx
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppConfig

    tallies: dict[str, Tally] = {}

    def record(key: str, name: str, backend: str, wl: str, rnd: Round) -> None:
        tallies.setdefault(key, Tally(key, name, backend, wl)).rounds.append(rnd)
        extra = f", {rnd.batches['mean_pairs_per_batch']:.1f} pairs/batch" if rnd.batches else ""
        err = f", {rnd.errors} errors" if rnd.errors else ""
        log(f"  {name} [{wl}]: {rnd.pairs_per_s:.2f} pairs/s, CPU share "
            f"{rnd.cpu_s / (rnd.wall_s * cpus):.0%}{extra}{err}")

    log("starting Ray and Serve")
    # Logical CPUs: the Classifier takes every core; one more leaves room for the small ingress.
    ray.init(address="local", num_cpus=cpus + 1, include_dashboard=False, log_to_driver=False,
             namespace="zsc-bench")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        app_config = AppConfig.model_validate({
            "model": str(model_dir),
            "backend": opts.backend,
            # Threads follow num_cpus (the service's defaults): nothing set here.
            "classifier": {"num_cpus": cpus},
            "ingress": {"num_cpus": 0.1},
            "jobs": {"enabled": False},
        })
        serve.run(build_app(app_config), name=APP, route_prefix="/")
        handle = serve.get_app_handle(APP)
        classifier = serve.get_deployment_handle("Classifier", app_name=APP)
        info = classifier.model_info.remote().result()
        niceness = {"driver": os.getpriority(os.PRIO_PROCESS, 0),
                    "classifier": descendant_nice(f"ServeReplica:{APP}:Classifier")}
        log(f"service up: {info['backend']}, {info['torch_threads']} torch thread(s) x {info['forward_workers']}, batching "
            f"{info['batching']}, nice {niceness}")
        with httpx.Client(base_url=url, timeout=300) as http:  # warm the whole path
            for item in mixed[:2]:
                http.post("/v1/classify", json={"texts": [item.text], "labels": list(item.labels)}).raise_for_status()

        sweep_models = {**models, f"fp32, {cpus} threads x 1": baseline}
        sweep, sweep_logits = batch_size_sweep(sweep_models, sweep_pairs, plan.batch_sizes)
        for bs in plan.batch_sizes:
            log(f"sweep batch {bs}: fp32 {sweep['fp32'][bs]:.2f}, int8 {sweep['int8'][bs]:.2f} pairs/s")
        best_bs = {name: max(values, key=values.get) for name, values in sweep.items()}
        bs = best_bs[precision]
        int8_report = {
            "speedup": sweep["int8"][best_bs["int8"]] / sweep["fp32"][best_bs["fp32"]],
            "best_batch_size": best_bs,
            **max_score_difference(sweep_logits["fp32"], sweep_logits["int8"], fp32.indices),
        }

        # Idle latency: one request at a time against one forward of the same pairs.
        sample = min(mixed, key=lambda i: abs(i.tokens - (MIN_TOKENS + MAX_TOKENS) // 2))
        sample_labels = list(label_sets()[5])
        sample_pairs = fp32.encode([sample.text], sample_labels, DEFAULT_TEMPLATE).pairs
        body = {"texts": [sample.text], "labels": sample_labels}
        fwd, http_lat, handle_lat = [], [], []
        with httpx.Client(base_url=url, timeout=300) as http:
            for warm in (True,) * 2 + (False,) * plan.idle_repeats:
                use_threads(chosen.threads)
                begin = now()
                chosen.forward(sample_pairs)
                f = now() - begin
                time.sleep(0.1)
                begin = now()
                http.post("/v1/classify", json=body).raise_for_status()
                h = now() - begin
                time.sleep(0.1)
                begin = now()
                handle.classify.remote(texts=[sample.text], labels=sample_labels).result()
                d = now() - begin
                time.sleep(0.1)
                if not warm:
                    fwd.append(f)
                    http_lat.append(h)
                    handle_lat.append(d)
        idle = {
            "repeats": plan.idle_repeats,
            "text_tokens": sample.tokens,
            "forward_ms": 1000 * statistics.median(fwd),
            "http_ms": 1000 * statistics.median(http_lat),
            "handle_ms": 1000 * statistics.median(handle_lat),
        }
        idle["http_overhead_ms"] = idle["http_ms"] - idle["forward_ms"]
        idle["handle_overhead_ms"] = idle["handle_ms"] - idle["forward_ms"]
        log(f"idle: forward {idle['forward_ms']:.1f} ms, HTTP {idle['http_ms']:.1f}, handle {idle['handle_ms']:.1f}")

        def offline(run: Callable[[], tuple[float, list[float]]], pairs: int) -> Round:
            cpu = tree_cpu_seconds()
            wall, lat = run()
            return Round(pairs, wall, tree_cpu_seconds() - cpu, lat)

        def online(run: Callable[[], Awaitable[tuple[float, list[float], int, int]]]) -> Round:
            classifier.reset_batch_stats.remote().result()
            cpu = tree_cpu_seconds()
            wall, lat, pairs, errors = asyncio.run(run())
            cpu = tree_cpu_seconds() - cpu
            return Round(pairs, wall, cpu, lat, errors, classifier.batch_stats.remote().result())

        methods: list[tuple[str, str, str, Callable[[list[Item], list[list[Pair]]], Round]]] = [
            ("c", f"(c) raw sorted forward, batch {bs}, {layout}", precision,
             lambda its, ps: offline(lambda: raw_forward(chosen, ps, bs)[:2], sum(map(len, ps)))),
            ("a", f"(a) thread pool x{plan.pool_workers}, forward per text", "fp32",
             lambda its, ps: offline(lambda: thread_pool(baseline, ps, plan.pool_workers), sum(map(len, ps)))),
            ("b", f"(b) transformers pipeline, batch_size={plan.pipeline_batch_size}", "fp32",
             lambda its, ps: offline(lambda: run_pipeline(pipe, its, plan.pipeline_batch_size), sum(map(len, ps)))),
            *[(f"d{n}", f"(d) HTTP, {n} clients", precision,
               lambda its, ps, n=n: online(lambda: http_run(url, its, n))) for n in plan.http_clients],
            ("e", f"(e) handle, {plan.handle_callers} callers", precision,
             lambda its, ps: online(lambda: handle_run(handle, its, plan.handle_callers))),
        ]
        for r in range(plan.rounds):
            log(f"round {r + 1}/{plan.rounds}")
            items, pairs = mixed[r :: plan.rounds], mixed_pairs[r :: plan.rounds]
            for key, name, backend, run in methods[r:] + methods[:r]:  # rotate the order
                record(key, name, backend, "mixed", run(items, pairs))

        # The HTTP-64 target on 5-label requests, between two halves of (c) on the same pairs.
        top = max(plan.http_clients)
        c5 = f"(c) raw sorted forward, batch {bs}, {layout}"
        record("c5", c5, precision, "5-label",
               offline(lambda: raw_forward(chosen, five_pairs[0::2], bs)[:2], sum(map(len, five_pairs[0::2]))))
        record(f"d{top}-5", f"(d) HTTP, {top} clients", precision, "5-label",
               online(lambda: http_run(url, five, top)))
        record("c5", c5, precision, "5-label",
               offline(lambda: raw_forward(chosen, five_pairs[1::2], bs)[:2], sum(map(len, five_pairs[1::2]))))
    finally:
        serve.shutdown()
        ray.shutdown()

    results = [t.summary(cpus) for t in tallies.values()]
    order = ["a", "b", "c", *[f"d{n}" for n in plan.http_clients], "e", "c5", f"d{top}-5"]
    results.sort(key=lambda r: order.index(r["key"]))
    by_key = {r["key"]: r for r in results}
    http5, c5_rate = by_key[f"d{top}-5"]["pairs_per_s"], by_key["c5"]["pairs_per_s"]
    http5_cpu, c5_cpu = by_key[f"d{top}-5"]["cpu_norm_pairs_per_s"], by_key["c5"]["cpu_norm_pairs_per_s"]
    service_rate, a_rate = by_key[f"d{top}"]["pairs_per_s"], by_key["a"]["pairs_per_s"]
    service_cpu, a_cpu = by_key[f"d{top}"]["cpu_norm_pairs_per_s"], by_key["a"]["cpu_norm_pairs_per_s"]
    need = 2 if opts.backend == "int8" else 1
    targets = [
        {"target": f"HTTP, {top} clients, 5 labels: >= 85% of (c)" + (" (an fp32 target)" if need == 2 else ""),
         "measured": f"{http5:.2f} / {c5_rate:.2f} = {http5 / c5_rate:.0%} (CPU-norm {http5_cpu / c5_cpu:.0%})",
         "met": http5 >= 0.85 * c5_rate},
        {"target": f"service (HTTP, {top} clients, mixed) vs (a): >= {need}x",
         "measured": f"{service_rate / a_rate:.2f}x (CPU-norm {service_cpu / a_cpu:.2f}x)",
         "met": service_rate >= need * a_rate},
        {"target": "int8: largest score difference vs fp32 <= 0.02",
         "measured": f"{int8_report['max_abs_score_diff']:.5f}", "met": int8_report["max_abs_score_diff"] <= 0.02},
        {"target": "idle request (1 text, 5 labels, HTTP) <= one forward + 20 ms",
         "measured": f"{idle['http_ms']:.1f} ms vs {idle['forward_ms']:.1f} + 20 ms",
         "met": idle["http_ms"] <= idle["forward_ms"] + 20},
    ]
    report = {
        "backend": opts.backend,
        "plan_name": plan_name,
        "plan": asdict(plan),
        "seed": opts.seed,
        "machine": {
            "cpus": cpus,
            "torch": torch.__version__,
            "ray": ray.__version__,
            "python": sys.version.split()[0],
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "niceness": niceness,
        },
        "service": {"batching": info["batching"], "torch_threads": info["torch_threads"],
                    "forward_workers": info["forward_workers"],
                    "classifier_num_cpus": app_config.classifier.num_cpus,
                    "ingress_num_cpus": app_config.ingress.num_cpus},
        "workload": workload,
        "results": results,
        "sweep": {
            "backends": list(sweep),
            "batch_sizes": list(plan.batch_sizes),
            "pairs_per_s": {k: {str(b): round(v, 3) for b, v in vals.items()} for k, vals in sweep.items()},
        },
        "int8": int8_report,
        "idle": idle,
        "targets": targets,
        "elapsed_s": time.monotonic() - started,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.out / f"bench-{opts.backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    chart(report, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem}.json, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
