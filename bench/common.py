"""What the benchmarks share: the seeded workload, CPU accounting (psutil), the raw-forward and
thread-pool baselines, closed-loop HTTP and handle load, and the comparison of two backends'
scores. bench/bench.py, bench/bench_gpu.py and the other scripts are built on it; it lives
outside the wheel, and no timed assertion lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.devtools.ports import free_port

if TYPE_CHECKING:
    from serve_app.engine.engine import Engine
    from serve_app.engine.protocol import Pair

__all__ = ["free_port"]

REPO = Path(__file__).resolve().parents[1]

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
        "texts_per_label_count": {
            str(k): sum(len(i.labels) == k for i in items) for k in LABEL_COUNTS
        },
        "text_tokens": {
            "min": min(i.tokens for i in items),
            "mean": round(float(np.mean([i.tokens for i in items])), 1),
            "max": max(i.tokens for i in items),
        },
        "pair_tokens_mean": round(float(np.mean(flat)), 1),
    }


# -- CPU accounting -----------------------------------------------------------------------------


def _tree(root: int | None = None) -> list[psutil.Process]:
    """A process and all its descendants: the driver, and the Ray processes it started (GCS,
    raylet, Serve's controller, proxy and replicas)."""
    proc = psutil.Process(root or os.getpid())
    return [proc, *proc.children(recursive=True)]


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process and all its descendants."""
    total = 0.0
    for proc in _tree(root):
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # it ended between the listing and the reading
        # Its children that ended and were waited for count too (a subprocess or a Ray worker
        # that ended during a measurement).
        total += times.user + times.system + times.children_user + times.children_system
    return total


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process). The measure for
    work spread over processes that come and go outside this process's tree (a Ray Data actor
    pool ends, unreaped by us, before a tree count could read it); it is only that work's on a
    machine otherwise idle, so reports that use it record the load average beside it."""
    times = psutil.cpu_times()._asdict()
    # Linux counts guest time inside user and nice already; idle and iowait are not busy.
    return float(
        sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice"))
    )


def descendant_nice(pattern: str) -> list[int]:
    """Niceness of this process's descendants whose command line contains pattern."""
    found = []
    for proc in _tree()[1:]:
        try:
            if pattern in " ".join(proc.cmdline()):
                found.append(proc.nice())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
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
            )
            if cpu > 0
            else None,
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
                sum(b["mean_pairs_per_batch"] * b["batches"] for b in batches) / n, 2
            )
            out["mean_calls_per_batch"] = round(
                sum(b["mean_calls_per_batch"] * b["batches"] for b in batches) / n, 2
            )
        return out


@contextlib.contextmanager
def local_serve(namespace: str, num_cpus: float) -> Iterator[str]:
    """A fresh local Ray with Serve on a free loopback port; yields Serve's URL, then stops both."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        namespace=namespace,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def add_common_args(parser: argparse.ArgumentParser, out: Path, what: str) -> None:
    """The options every full-size benchmark takes: where the report goes, the model, the seed."""
    parser.add_argument("--out", type=Path, default=out, help=f"Where to write {what}.")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="The full-size random model (built here when missing).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the workload.")


def now() -> float:
    return time.perf_counter()


def use_threads(engine: Engine) -> None:
    """torch's intra-op thread count is one per process: set it for the engine about to run
    (the serving layout runs 1 thread per sub-batch; the baselines run torch's default). An
    ONNX Runtime session keeps its own threads."""
    if engine.backend.name in ("torch", "int8"):
        import torch

        torch.set_num_threads(engine.threads)


def encode_items(engine: Engine, items: Sequence[Item]) -> list[list[Pair]]:
    """Each item's pairs, tokenized as the service tokenizes them."""
    return [
        engine.tokenizer.encode(
            [i.text], [[DEFAULT_TEMPLATE.format(label) for label in i.labels]]
        ).pairs
        for i in items
    ]


def native_quantize_preset() -> str:
    """The optimum preset this CPU runs best: avx512_vnni, avx512 or avx2 on x86, arm64 on Arm."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "avx2"
    for preset, flag in (("avx512_vnni", "avx512_vnni"), ("avx512", "avx512f")):
        if flag in flags:
            return preset
    return "avx2"


def hf_tokenizer(model_dir: Path) -> Any:
    """The model's `transformers` tokenizer (for word lengths when building the workload)."""
    from serve_app.engine.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(str(model_dir), None)


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
    use_threads(model)
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
    pairs_per_s = {
        name: {bs: 2 * n_pairs / w for bs, w in by_bs.items()} for name, by_bs in walls.items()
    }
    return pairs_per_s, logits_by_model


def thread_pool(
    model: Any, pairs: Sequence[Sequence[Pair]], workers: int
) -> tuple[float, list[float]]:
    """(a): one forward per text, its labels as one small batch, in a pool of threads.
    Texts are tokenized beforehand (fast tokenizers are not thread-safe), which favours (a)."""

    def one(text_pairs: Sequence[Pair]) -> float:
        begin = now()
        model.forward(text_pairs, max_batch_tokens=UNBOUNDED)
        return now() - begin

    use_threads(model)

    started = now()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        latencies = list(pool.map(one, pairs))
    return now() - started, latencies


def run_pipeline(
    pipe: Any, items: Sequence[Item], batch_size: int, outputs: dict[int, Any] | None = None
) -> tuple[float, list[float]]:
    """(b): the transformers pipeline, one streaming call per label set (it batches pairs across
    the texts that share labels). Latency: the pipeline takes up a text -> its result comes out.
    `outputs`, when given, receives each item's result by its index."""
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[item.labels].append(i)
    taken: dict[int, float] = {}
    latencies = []
    import torch

    torch.set_num_threads(
        os.cpu_count() or 1
    )  # the pipeline as users run it: torch's default threads
    started = now()
    for labels, indices in groups.items():

        def texts(indices: list[int] = indices) -> Iterator[str]:
            for i in indices:
                taken[i] = now()
                yield items[i].text

        results = pipe(
            texts(),
            candidate_labels=list(labels),
            hypothesis_template=DEFAULT_TEMPLATE,
            batch_size=batch_size,
        )
        for i, output in zip(indices, results):
            latencies.append(now() - taken[i])
            if outputs is not None:
                outputs[i] = output
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


async def http_run(
    url: str, items: Iterable[Item], clients: int
) -> tuple[float, list[float], int, int]:
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


async def handle_run(
    handle: Any, items: Sequence[Item], callers: int
) -> tuple[float, list[float], int, int]:
    async def send(item: Item) -> bool:
        body = await handle.classify.remote(texts=[item.text], labels=list(item.labels))
        return len(body["results"][0]["scores"]) == len(item.labels)

    return await closed_loop(send, items, callers)


# -- helpers ------------------------------------------------------------------------------------

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


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


def max_score_difference(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], indices: Any
) -> dict[str, float]:
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


def ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}x" if x and y else "—"
