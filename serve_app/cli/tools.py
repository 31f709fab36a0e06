"""Tools beside the service: `make-test-model`, `export onnx`, `hash-key` and `bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from serve_app.cli.common import err_console, fail

export_app = typer.Typer(help="Export a local model for another backend.", no_args_is_help=True)


def make_test_model(
    out_dir: Path = typer.Argument(..., help="Directory to write the model to."),
    full_size: bool = typer.Option(
        False, "--full-size", help="The real model's shape (82.1M parameters), for benchmarks."
    ),
    labels: str = typer.Option(
        "contradiction,entailment,neutral", help="id2label in index order, comma-separated."
    ),
    max_length: int = typer.Option(0, help="Tokenizer window (0 = 64 tiny, 512 full-size)."),
    seed: int = typer.Option(0, help="Random seed of the weights."),
) -> None:
    """Build a random NLI cross-encoder (scores are random) loadable with from_pretrained."""
    from serve_app.devtools.test_models import build_test_model

    path = build_test_model(
        out_dir,
        full_size=full_size,
        label_order=[name.strip() for name in labels.split(",") if name.strip()],
        max_length=max_length or None,
        seed=seed,
    )
    typer.echo(f"wrote a random-weight NLI test model to {path} (its scores are random)")


@export_app.command("onnx")
def export_onnx_command(
    model_dir: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="A local model directory (config.json, weights)."
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="Also write a dynamic int8 file for this CPU: avx512_vnni, avx512, avx2 or arm64.",
    ),
) -> None:
    """Write MODEL_DIR/onnx/model.onnx (and with --quantize MODEL_DIR/onnx/model_q*int8_<cpu>.onnx),
    as hub repos lay them out; serve them with backend=onnx (and onnx_file for a quantised one)."""
    from serve_app.engine import export

    if quantize is not None and quantize not in export.PRESETS:
        raise fail(f"--quantize must be one of {', '.join(export.PRESETS)}, not {quantize!r}")
    try:
        written = [export.export_onnx(model_dir)]
        if quantize is not None:
            written.append(export.quantize_onnx(model_dir, quantize))
    except ImportError as exc:
        raise fail(
            f"zsc export onnx needs torch and ONNX Runtime ({exc})", 'pip install "zsc[serve,onnx]"'
        ) from None
    for path in written:
        typer.echo(f"wrote {path}")
    if quantize is not None:
        err_console.print(
            f"serve it with: backend=onnx onnx_file={written[-1].relative_to(model_dir)}",
            highlight=False,
        )


def hash_key_command(
    key: str | None = typer.Argument(
        None,
        help="The key. Omit it to type it hidden, or pipe it in: then it stays out of "
        "shell history.",
    ),
) -> None:
    """Print an API key's 'sha256:<hex>' form for auth.api_key_hashes (the server keeps no keys)."""
    import getpass
    import sys

    from serve_app.core.keys import hash_key

    if key is None:
        # getpass prompts on the terminal, so stdout carries only the hash.
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = key.rstrip("\r\n")
    if not key:
        raise fail("no key given")
    typer.echo(hash_key(key))


def bench_command(
    suite: str = typer.Argument(
        "service",
        help="service: the service against its peers (bench/bench.py); bulk: zsc bulk against "
        "a raw batched forward and the jobs API (bench/bench_bulk.py).",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A small run (under 2 minutes on an idle machine)."
    ),
    backend: str = typer.Option(
        "torch", "--backend", help="torch (fp32), int8, onnx or onnx-int8: the served backend."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for JSON, Markdown and PNG (default: bench/results)."
    ),
    rows: int | None = typer.Option(
        None, "--rows", min=2, help="bulk: texts in the workload (default: bench_bulk.py's)."
    ),
) -> None:
    """Benchmark the service against its peers and a raw batched forward (`python -m bench`),
    or `zsc bulk` (`zsc bench bulk`); minutes. Runs from a source checkout, where bench/ lies
    beside serve_app/."""
    if suite not in ("service", "bulk"):
        raise fail(f"the benchmark is service or bulk, not {suite!r}")
    if backend not in ("torch", "int8", "onnx", "onnx-int8"):
        raise fail(f"--backend must be torch, int8, onnx or onnx-int8, not {backend!r}")
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / "__main__.py").is_file():
        raise fail(
            f"no bench/ beside {checkout / 'serve_app'}",
            "zsc bench runs from a source checkout (pip install -e .)",
        )
    if suite == "bulk":
        # --quick: 100 rows, enough to check it works (the actors' start dominates).
        count = rows or (100 if quick else None)
        argv = [sys.executable, "-m", "bench", "bulk", *(["--rows", str(count)] if count else [])]
    else:
        argv = [
            sys.executable,
            "-m",
            "bench",
            "--backend",
            backend,
            *(["--quick"] if quick else []),
        ]
    argv += ["--out", str(out)] if out else []
    raise typer.Exit(subprocess.call(argv, cwd=checkout))
