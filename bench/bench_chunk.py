"""long_text=chunk against truncate on a 2,000-token text (issue 26).

    .venv/bin/python -m bench.bench_chunk [--repeats 5] [--labels 5] [--stride 64] [--out DIR]

The Engine in-process (no Ray, no HTTP) on the full-size random cross-encoder (the real
model's cost; built once into .zsc/bench-model), result cache off. One text of about 2,000
tokens x `--labels` labels, scored with `truncate` (one 512-token window) and with `chunk`
(every window), alternating which goes first, after one warm-up of each. Reported: the median
seconds of each, their ratio, the windows and pairs each scored, and how long `start`
(tokenizing and planning the windows) took within a chunked request.

Writes chunk.json to the out directory and prints it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_MODEL_DIR,
    DEFAULT_OUT,
    WORDS,
    ensure_model,
    loadavg,
    log,
)
from serve_app.config import LimitsConfig, ModelConfig
from serve_app.core.requests import prepare_request
from serve_app.engine.engine import Engine

TOKENS = 2000
LABELS = ["sports", "finance", "politics", "technology", "weather", "health", "music", "travel"]


def long_text(engine: Engine, tokens: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while len(engine.tokenizer.encode_texts([" ".join(words)])[0].ids) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(50))
    while len(engine.tokenizer.encode_texts([" ".join(words)])[0].ids) > tokens:
        words.pop()
    return " ".join(words) + "."


def timed(engine: Engine, text: str, labels: list[str], **options: Any) -> dict[str, Any]:
    request = prepare_request([text], labels, None, None, LimitsConfig(), **options)
    started = time.perf_counter()
    pending = engine.start(request)
    tokenized = time.perf_counter()
    answer = engine.finish(pending, list(engine.forward(pending.todo)))
    ended = time.perf_counter()
    return {
        "seconds": ended - started,
        "start_seconds": tokenized - started,
        "pairs": answer.pairs,
        "windows": answer.results[0].windows or 1,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    model_dir = ensure_model(args.model_dir)
    engine = Engine(ModelConfig(model=str(model_dir)), str(model_dir))
    engine.warm_up()
    labels = LABELS[: args.labels]
    text = long_text(engine, TOKENS, seed=0)
    modes: dict[str, dict[str, Any]] = {
        "truncate": {"long_text": "truncate"},
        "chunk": {"long_text": "chunk", "chunk_stride": args.stride},
        "chunk_stride_0": {"long_text": "chunk", "chunk_stride": 0},
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
    for options in modes.values():
        timed(engine, text, labels, **options)  # warm-up
    for repeat in range(args.repeats):
        order = list(modes) if repeat % 2 == 0 else list(reversed(modes))
        for name in order:
            samples[name].append(timed(engine, text, labels, **modes[name]))
        log(f"round {repeat + 1}/{args.repeats} done")
    medians = {
        name: statistics.median(s["seconds"] for s in runs) for name, runs in samples.items()
    }
    report = {
        "benchmark": "bench_chunk",
        "text_tokens": TOKENS,
        "labels": len(labels),
        "window": engine.window,
        "stride": args.stride,
        "repeats": args.repeats,
        "device": engine.device,
        "cpus": engine.cpus,
        "forward_workers": engine.workers,
        "loadavg": loadavg(),
        "median_s": {name: round(value, 4) for name, value in medians.items()},
        "ratio_vs_truncate": {
            name: round(value / medians["truncate"], 2) for name, value in medians.items()
        },
        "windows": {name: runs[0]["windows"] for name, runs in samples.items()},
        "pairs": {name: runs[0]["pairs"] for name, runs in samples.items()},
        "median_start_s": {
            name: round(statistics.median(s["start_seconds"] for s in runs), 4)
            for name, runs in samples.items()
        },
        "samples_s": {
            name: [round(s["seconds"], 4) for s in runs] for name, runs in samples.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chunk.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
