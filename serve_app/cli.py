"""The `zsc` command line."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="zsc: zero-shot text classification on Ray Serve.", no_args_is_help=True)


@app.command("make-test-model")
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
    from serve_app.testing import build_test_model

    path = build_test_model(
        out_dir,
        full_size=full_size,
        label_order=[name.strip() for name in labels.split(",") if name.strip()],
        max_length=max_length or None,
        seed=seed,
    )
    typer.echo(f"wrote a random-weight NLI test model to {path} (its scores are random)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
