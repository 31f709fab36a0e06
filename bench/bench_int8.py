"""int8 against fp32 on the full-size random model, through the Engine as the service runs it.

    .venv/bin/python -m bench.bench_int8 [--rounds 5] [--texts 24] [--onnx] [--out PATH]

fp32 (`backend: torch`) runs its length-bucketed padded sub-batches; int8 (`backend: int8`,
dynamic quantisation) runs one pair per forward, so a pair's activation scale is its own and its
scores do not depend on what shares its batch (engine/protocol.py). Both get the same mixed
workload (texts of 10-200 tokens with 2, 5 or 20 labels), the engine's default thread layout,
rounds interleaved so both see the same noise. `--onnx` adds ONNX Runtime fp32 and the quantised
file (exported once into the model directory). Prints and writes (default
bench/results/int8.json) each backend's median pairs/s, its ratio to fp32, and its largest score
difference from fp32 (single- and multi-label), plus every round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_MODEL_DIR,
    describe_workload,
    encode_items,
    ensure_model,
    hf_tokenizer,
    loadavg,
    log,
    make_items,
    max_score_difference,
    mixed_counts,
    native_quantize_preset,
    use_threads,
)
from serve_app.config import ModelConfig
from serve_app.engine.engine import Engine

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime fp32 and int8")
    parser.add_argument("--out", type=Path, default=RESULTS / "int8.json")
    opts = parser.parse_args()

    model_dir = ensure_model(opts.model_dir.resolve())
    settings: dict[str, dict[str, Any]] = {
        "fp32": {"backend": "torch"},
        "int8": {"backend": "int8"},
    }
    if opts.onnx:
        from serve_app.engine.export import quantize_onnx, quantized_file

        preset = native_quantize_preset()
        if not (model_dir / "onnx" / quantized_file(preset)).is_file():
            log(f"exporting and quantising ONNX ({preset}) once")
            quantize_onnx(model_dir, preset)
        settings["onnx_fp32"] = {"backend": "onnx"}
        settings["onnx_int8"] = {"backend": "onnx", "onnx_file": f"onnx/{quantized_file(preset)}"}

    engines = {
        name: Engine(ModelConfig(model=str(model_dir), **kw), str(model_dir))
        for name, kw in settings.items()
    }
    for name, engine in engines.items():
        use_threads(engine)
        engine.warm_up()
        log(
            f"{name}: {engine.workers} workers x {engine.threads} threads, "
            f"max_rows_per_forward={engine.backend.max_rows_per_forward}"
        )

    items = make_items(hf_tokenizer(model_dir), mixed_counts(opts.texts, seed=3), seed=3)
    pairs = encode_items(engines["fp32"], items)
    flat = [p for ps in pairs for p in ps]
    rounds: dict[str, list[float]] = {name: [] for name in engines}
    logits: dict[str, np.ndarray] = {}
    for r in range(opts.rounds):
        # Alternate the order each round, so neither backend always runs first.
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            engine = engines[name]
            use_threads(engine)
            started = time.perf_counter()
            out = engine.forward(flat)
            seconds = time.perf_counter() - started
            rounds[name].append(len(flat) / seconds)
            logits[name] = out
            log(f"round {r + 1} {name}: {len(flat) / seconds:.1f} pairs/s")

    # Per text: logits rows of its pairs, for the score comparison.
    def per_text(out: np.ndarray) -> list[np.ndarray]:
        rows, start = [], 0
        for ps in pairs:
            rows.append(out[start : start + len(ps)])
            start += len(ps)
        return rows

    indices = engines["fp32"].indices
    fp32_median = statistics.median(rounds["fp32"])
    summary: dict[str, Any] = {}
    for name in engines:
        median = statistics.median(rounds[name])
        summary[name] = {
            "pairs_per_s_median": round(median, 2),
            "ratio_to_fp32": round(median / fp32_median, 2),
            "max_rows_per_forward": engines[name].backend.max_rows_per_forward,
            **(
                max_score_difference(per_text(logits["fp32"]), per_text(logits[name]), indices)
                if name != "fp32"
                else {}
            ),
        }
    result = {
        "command": " ".join(["python -m bench.bench_int8", *sys.argv[1:]]),
        "model": str(model_dir),
        "workload": describe_workload(items, pairs),
        "cpus": os.cpu_count(),
        "loadavg_end": loadavg(),
        "summary": summary,
        "rounds_pairs_per_s": {k: [round(x, 2) for x in v] for k, v in rounds.items()},
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in summary.items():
        diff = row.get("max_abs_score_diff")
        print(
            f"{name:10s} {row['pairs_per_s_median']:8.2f} pairs/s  {row['ratio_to_fp32']:.2f}x fp32"
            + (f"  largest score difference {diff:.4f}" if diff is not None else "")
        )
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
