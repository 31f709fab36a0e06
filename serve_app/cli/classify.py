"""`zsc classify` (texts now) and `zsc batch` (a file, resumable), over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from serve_app.cli.common import (
    ChunkAggregateOption,
    ChunkStrideOption,
    Connection,
    LabelsFileOption,
    LabelsOption,
    LongTextOption,
    MultiLabelOption,
    PrefilterOption,
    TemplateOption,
    ThresholdOption,
    err_console,
    fail,
    out_console,
    pick_labels,
    print_json,
    reported_errors,
    request_options,
    result_table,
    warn,
)
from serve_app.client.batch import (
    BatchError,
    BatchSettings,
    BatchSummary,
    done_rows,
    read_rows,
    run_batch,
)
from serve_app.client.http import AsyncZeroShotClient, RetryPolicy
from serve_app.core.defaults import DEFAULT_TEMPLATE


def classify(
    ctx: typer.Context,
    texts: list[str] = typer.Argument(..., help="One or more texts to classify."),
    labels: LabelsOption = None,
    labels_file: LabelsFileOption = None,
    template: TemplateOption = DEFAULT_TEMPLATE,
    multi_label: MultiLabelOption = False,
    as_json: bool = typer.Option(False, "--json", help="Print the service's JSON answer."),
    prefilter_top_k: PrefilterOption = None,
    long_text: LongTextOption = None,
    chunk_stride: ChunkStrideOption = None,
    chunk_aggregate: ChunkAggregateOption = None,
    threshold: ThresholdOption = None,
) -> None:
    """Classify texts now (POST /v1/classify) and show each label's probability."""
    conn: Connection = ctx.obj
    chosen = pick_labels(labels, labels_file)
    options = request_options(long_text, chunk_stride, chunk_aggregate, threshold)
    with reported_errors(conn.url), conn.client() as client:
        body = client.classify(texts, chosen, template, multi_label, prefilter_top_k, **options)
    if as_json:
        print_json(body)
        return
    warn(body.get("warning"))
    for result in body["results"]:
        out_console.print(result_table(result))
    if body.get("truncated"):
        warn(f"texts {body['truncated']} were cut to the model's window")


def batch(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="Input: .txt, .jsonl or .csv."
    ),
    labels: LabelsOption = None,
    labels_file: LabelsFileOption = None,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output JSONL, one line per row; a rerun skips rows already there."
    ),
    text_field: str = typer.Option(
        "text", "--text-field", help="Field (.jsonl) or column (.csv) that holds the text."
    ),
    id_field: str = typer.Option(
        "id", "--id-field", help="Field or column copied to each output line when present."
    ),
    template: TemplateOption = DEFAULT_TEMPLATE,
    multi_label: MultiLabelOption = False,
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight at once."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Texts per request."),
    retries: int = typer.Option(
        20,
        "--retries",
        min=0,
        help="Resends of a request that did not complete: 429/503 after Retry-After; a dropped "
        "connection, 502/504 or Serve's plain-text 500 with backoff.",
    ),
    prefilter_top_k: PrefilterOption = None,
    long_text: LongTextOption = None,
    chunk_stride: ChunkStrideOption = None,
    chunk_aggregate: ChunkAggregateOption = None,
    threshold: ThresholdOption = None,
) -> None:
    """Classify every row of a file, with a progress bar; rerun the same command to resume.

    Exits 1 when some rows were refused (their lines hold an "error" instead of a "result")."""
    conn: Connection = ctx.obj
    try:
        rows = read_rows(file, text_field, id_field)
        done = done_rows(out)
    except BatchError as exc:
        raise fail(str(exc)) from None
    pending = [row for row in rows if row.index not in done]
    settings = BatchSettings(
        pick_labels(labels, labels_file),
        template,
        multi_label,
        batch_size,
        concurrency,
        prefilter_top_k,
        request_options(long_text, chunk_stride, chunk_aggregate, threshold),
    )

    progress = Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    task = progress.add_task("rows", total=len(rows), completed=len(rows) - len(pending))

    async def run() -> BatchSummary:
        async with AsyncZeroShotClient(
            conn.url,
            api_key=conn.api_key,
            timeout=conn.timeout,
            retry=RetryPolicy(max_retries=retries),
            max_connections=concurrency,
        ) as client:
            return await run_batch(
                client, pending, out, settings, lambda n: progress.advance(task, n)
            )

    resume_hint = f"rerun the same command to resume; finished rows stay in {out}"
    try:
        with reported_errors(conn.url, resume_hint), progress:
            summary = asyncio.run(run())
    except KeyboardInterrupt:
        err_console.print(f"interrupted: {resume_hint}", highlight=False)
        raise typer.Exit(130) from None
    warn(summary.warning)
    skipped = f", {len(rows) - len(pending)} already there" if len(pending) < len(rows) else ""
    errors = f"{summary.errors} error" + ("" if summary.errors == 1 else "s")
    err_console.print(f"wrote {summary.written} rows to {out} ({errors}{skipped})", highlight=False)
    if summary.errors:
        raise typer.Exit(1)
