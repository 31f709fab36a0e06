"""The JSON depth check of the body guard, before (a pure-Python byte loop) and after (C-speed
bytes operations), on 8 MB bodies.

    .venv/bin/python -m bench.bench_json_depth [--rounds 5] [--out PATH]

Bodies: `texts` (a classify body of ordinary texts with a few brackets: the common case),
`strings` (brackets, escaped quotes and backslashes inside strings: the adversarial case),
`siblings` (8 MB of shallow `[]`: every byte a bracket), `deep` (the strings body with nesting
past the limit at its end). Prints and writes (default bench/results/json_depth.json) the
median seconds per check of each implementation, their ratio, and whether they agreed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.http.middleware.body_guard import json_depth_exceeds

MAX_DEPTH = 16
MB = 1024 * 1024


def byte_loop(body: bytes, max_depth: int) -> bool:
    """The check as it was before: one Python step per byte (the baseline)."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def bodies() -> dict[str, bytes]:
    text = "The striker [scored] twice {before} half time. "
    texts = json.dumps({"texts": [text * 40] * (8 * MB // (len(text) * 40)), "labels": ["a"]})
    tricky = '[[{{\\"]]\\\\"}}' * (8 * MB // 16)
    strings = json.dumps({"texts": [tricky], "labels": ["a"]})
    nested: Any = 1
    for _ in range(MAX_DEPTH + 1):
        nested = [nested]
    return {
        "texts": texts.encode(),
        "strings": strings.encode(),
        "siblings": b"[" + b"[]," * (8 * MB // 3) + b"[]]",
        "deep": json.dumps({"texts": [tricky], "x": nested}).encode(),
    }


def median_s(check: Callable[[bytes, int], bool], body: bytes, rounds: int) -> tuple[float, bool]:
    times, answer = [], False
    for _ in range(rounds):
        started = time.perf_counter()
        answer = check(body, MAX_DEPTH)
        times.append(time.perf_counter() - started)
    return statistics.median(times), answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/json_depth.json"))
    args = parser.parse_args()
    results = {}
    for name, body in bodies().items():
        before, want = median_s(byte_loop, body, args.rounds)
        after, got = median_s(json_depth_exceeds, body, args.rounds)
        results[name] = {
            "bytes": len(body),
            "before_s": round(before, 5),
            "after_s": round(after, 5),
            "speedup": round(before / after, 1),
            "deep": got,
            "agree": got == want,
        }
        print(
            f"{name:9s} {len(body) / MB:5.1f} MB  before {before:.4f} s  after {after:.4f} s  "
            f"x{before / after:.0f}  deep={got} agree={got == want}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "bodies": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
