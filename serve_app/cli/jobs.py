"""`zsc job ...`: large inputs as server-side jobs (POST /v1/jobs), polled or waited for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

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
    pick_labels,
    print_json,
    reported_errors,
    request_options,
)
from serve_app.client.batch import BatchError, read_rows
from serve_app.core.defaults import DEFAULT_TEMPLATE

job_app = typer.Typer(
    help="Large inputs as server-side jobs (POST /v1/jobs).", no_args_is_help=True
)


def _job_texts(file: Path | None, texts: list[str] | None, text_field: str) -> list[str]:
    if (file is None) == (not texts):
        raise fail("give either a FILE or --text (one or more), not both")
    if file is None:
        return list(texts or [])
    try:
        rows = read_rows(file, text_field)
    except BatchError as exc:
        raise fail(str(exc)) from None
    bad = [row for row in rows if row.text is None]
    if bad:
        raise fail(f"{file}: row {bad[0].index}: {bad[0].problem} ({len(bad)} such rows)")
    return [row.text for row in rows if row.text is not None]


def _describe_job(job: dict[str, Any]) -> str:
    progress = job["progress"]
    line = f"job {job['id']}: {job['state']}, {progress['completed_texts']}/{progress['total_texts']} texts"
    if job.get("error"):
        line += f"; {job['error']['type']}: {job['error']['message']}"
    return line


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    file: Path | None = typer.Argument(
        None, exists=True, dir_okay=False, readable=True, help="Input: .txt, .jsonl or .csv."
    ),
    texts: list[str] | None = typer.Option(
        None, "--text", "-x", help="A text (repeatable), instead of FILE."
    ),
    labels: LabelsOption = None,
    labels_file: LabelsFileOption = None,
    template: TemplateOption = DEFAULT_TEMPLATE,
    multi_label: MultiLabelOption = False,
    text_field: str = typer.Option(
        "text", "--text-field", help="Field or column holding the text."
    ),
    callback_url: str | None = typer.Option(
        None, "--callback-url", help="Webhook for the end event."
    ),
    metadata: str | None = typer.Option(None, "--metadata", help="A JSON object kept on the job."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Resubmitting with the same key returns the same job."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the job's JSON instead of its id."),
    prefilter_top_k: PrefilterOption = None,
    long_text: LongTextOption = None,
    chunk_stride: ChunkStrideOption = None,
    chunk_aggregate: ChunkAggregateOption = None,
    threshold: ThresholdOption = None,
) -> None:
    """Submit texts as a job; prints the job id (for `zsc job wait`)."""
    conn: Connection = ctx.obj
    chosen = pick_labels(labels, labels_file)
    job_texts = _job_texts(file, texts, text_field)
    try:
        meta = json.loads(metadata) if metadata is not None else None
    except json.JSONDecodeError as exc:
        raise fail(f"--metadata is not JSON: {exc}") from None
    with reported_errors(conn.url), conn.client() as client:
        job = client.submit_job(
            job_texts,
            chosen,
            template,
            multi_label,
            callback_url,
            meta,
            idempotency_key,
            prefilter_top_k,
            **request_options(long_text, chunk_stride, chunk_aggregate, threshold),
        )
    if as_json:
        print_json(job)
    else:
        err_console.print(_describe_job(job), highlight=False)
        typer.echo(job["id"])


@job_app.command("status")
def job_status(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job's id."),
    as_json: bool = typer.Option(False, "--json", help="Print the job's JSON."),
) -> None:
    """Show a job's state and progress."""
    conn: Connection = ctx.obj
    with reported_errors(conn.url), conn.client() as client:
        job = client.get_job(job_id)
    if as_json:
        print_json(job)
    else:
        typer.echo(_describe_job(job))


@job_app.command("wait")
def job_wait(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job's id."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write one JSON line per result ({row, result}) here."
    ),
    timeout_s: float | None = typer.Option(
        None, "--wait-timeout", help="Give up after this many seconds."
    ),
    page_size: int | None = typer.Option(
        None, "--page-size", min=1, help="Results per request (default: the service's page size)."
    ),
) -> None:
    """Wait until a job ends, then print it with all its results (or write them with -o).

    Exits 1 unless the job succeeded."""
    conn: Connection = ctx.obj
    with reported_errors(conn.url), conn.client() as client:
        try:
            job = client.wait_job(job_id, timeout_s=timeout_s, page_size=page_size)
        except TimeoutError as exc:
            raise fail(str(exc)) from None
    if out is None:
        print_json(job)
    else:
        with out.open("w", encoding="utf-8") as f:
            for row, result in enumerate(job["results"]):
                # null marks a text the job never ran (it was cancelled or failed first).
                record = (
                    {"row": row, "result": result}
                    if result is not None
                    else {
                        "row": row,
                        "error": {
                            "type": "not_run",
                            "message": f"the job ended ({job['state']}) first",
                        },
                    }
                )
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        err_console.print(f"wrote {len(job['results'])} rows to {out}", highlight=False)
    err_console.print(_describe_job(job), highlight=False)
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@job_app.command("cancel")
def job_cancel(ctx: typer.Context, job_id: str = typer.Argument(..., help="The job's id.")) -> None:
    """Cancel a job; results already computed are kept."""
    conn: Connection = ctx.obj
    with reported_errors(conn.url), conn.client() as client:
        typer.echo(_describe_job(client.cancel_job(job_id)))


@job_app.command("list")
def job_list(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", min=1, help="Jobs per page."),
    cursor: str | None = typer.Option(None, "--cursor", help="next_cursor of the previous page."),
) -> None:
    """List jobs, newest first, as JSON."""
    conn: Connection = ctx.obj
    with reported_errors(conn.url), conn.client() as client:
        print_json(client.list_jobs(limit, cursor))
