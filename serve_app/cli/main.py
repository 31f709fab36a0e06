"""The `zsc` command line: classify, batch files, jobs, `bulk` (serve_app/cli/bulk.py), `make-test-model`, `hash-key`, `k8s`,
`export onnx` and `bench`.

Every command that talks to a service goes through `serve_app.client.http`, so the CLI resends
what did not complete exactly as Python callers do, and gets the same typed errors. Results go to stdout
(a table, or JSON with `--json`); progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from serve_app.cli.bulk import bulk
from serve_app.client.batch import (
    BatchError,
    BatchSettings,
    BatchSummary,
    done_rows,
    read_rows,
    run_batch,
)
from serve_app.client.http import (
    DEFAULT_URL,
    AsyncZeroShotClient,
    RetryPolicy,
    ZeroShotClient,
    ZscHTTPError,
)
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.devtools.kube import kube_app

app = typer.Typer(help="zsc: zero-shot text classification on Ray Serve.", no_args_is_help=True)
job_app = typer.Typer(
    help="Large inputs as server-side jobs (POST /v1/jobs).", no_args_is_help=True
)
export_app = typer.Typer(help="Export a local model for another backend.", no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(kube_app, name="k8s")
app.add_typer(export_app, name="export")
app.command("bulk")(bulk)

out_console = Console()
# Messages may hold long paths: let the terminal wrap them, so they stay greppable lines.
err_console = Console(stderr=True, soft_wrap=True)


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str | None
    timeout: float

    def client(self) -> ZeroShotClient:
        return ZeroShotClient(self.url, api_key=self.api_key, timeout=self.timeout)


@app.callback()
def connection_options(
    ctx: typer.Context,
    url: str = typer.Option(
        DEFAULT_URL, "--url", envvar="ZSC_URL", help="Base URL of the service."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="ZSC_API_KEY", help="Sent as 'Authorization: Bearer KEY'."
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for one answer."),
) -> None:
    ctx.obj = Connection(url, api_key, timeout)


def fail(message: str, hint: str | None = None) -> typer.Exit:
    # Messages are text, not markup: "zsc[serve]" must print as written.
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err_console.print(hint, highlight=False, markup=False)
    return typer.Exit(1)


@contextmanager
def reported_errors(url: str, hint: str | None = None) -> Iterator[None]:
    """Turn service and network failures into one readable line and exit status 1."""
    try:
        yield
    except ZscHTTPError as exc:
        raise fail(str(exc), hint) from None
    except httpx.TransportError as exc:
        raise fail(f"cannot reach {url}: {exc}", hint) from None


def warn(message: str | None) -> None:
    if message:
        err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


def result_table(result: dict[str, Any]) -> Table:
    sequence = result["sequence"]
    title = sequence if len(sequence) <= 80 else sequence[:77] + "..."
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("", width=32)
    for label, score in zip(result["labels"], result["scores"]):
        table.add_row(label, f"{score:.4f}", Bar(1.0, 0.0, score, width=30, color="cyan"))
    return table


# Options that classify, batch and job submit share.
TemplateOption = Annotated[str, typer.Option("--template", "-t", help="Hypothesis with one {}.")]
MultiLabelOption = Annotated[
    bool, typer.Option("--multi-label", help="Score each label independently.")
]
PrefilterOption = Annotated[
    int | None,
    typer.Option(
        "--prefilter-top-k",
        min=0,
        help="With a prefilter on the server: score only the k labels most similar to each text "
        "(0 = every label; default: the server's top_k).",
    ),
]


@app.command()
def classify(
    ctx: typer.Context,
    texts: list[str] = typer.Argument(..., help="One or more texts to classify."),
    labels: str = typer.Option(..., "--labels", "-l", help="Candidate labels, comma-separated."),
    template: TemplateOption = DEFAULT_TEMPLATE,
    multi_label: MultiLabelOption = False,
    as_json: bool = typer.Option(False, "--json", help="Print the service's JSON answer."),
    prefilter_top_k: PrefilterOption = None,
) -> None:
    """Classify texts now (POST /v1/classify) and show each label's probability."""
    conn: Connection = ctx.obj
    with reported_errors(conn.url), conn.client() as client:
        body = client.classify(texts, labels, template, multi_label, prefilter_top_k)
    if as_json:
        print_json(body)
        return
    warn(body.get("warning"))
    for result in body["results"]:
        out_console.print(result_table(result))
    if body.get("truncated"):
        warn(f"texts {body['truncated']} were cut to the model's window")


@app.command()
def batch(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="Input: .txt, .jsonl or .csv."
    ),
    labels: str = typer.Option(..., "--labels", "-l", help="Candidate labels, comma-separated."),
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
        labels, template, multi_label, batch_size, concurrency, prefilter_top_k
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
    labels: str = typer.Option(..., "--labels", "-l", help="Candidate labels, comma-separated."),
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
) -> None:
    """Submit texts as a job; prints the job id (for `zsc job wait`)."""
    conn: Connection = ctx.obj
    job_texts = _job_texts(file, texts, text_field)
    try:
        meta = json.loads(metadata) if metadata is not None else None
    except json.JSONDecodeError as exc:
        raise fail(f"--metadata is not JSON: {exc}") from None
    with reported_errors(conn.url), conn.client() as client:
        job = client.submit_job(
            job_texts,
            labels,
            template,
            multi_label,
            callback_url,
            meta,
            idempotency_key,
            prefilter_top_k,
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


@app.command("hash-key")
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


@app.command("bench")
def bench_command(
    quick: bool = typer.Option(
        False, "--quick", help="A small run (under 2 minutes on an idle machine)."
    ),
    backend: str = typer.Option(
        "torch", "--backend", help="torch (fp32), int8, onnx or onnx-int8: the served backend."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for JSON, Markdown and PNG (default: bench/results)."
    ),
) -> None:
    """Benchmark the service against its peers and a raw batched forward (bench/bench.py; minutes)."""
    import importlib.util
    import sys

    if backend not in ("torch", "int8", "onnx", "onnx-int8"):
        raise fail(f"--backend must be torch, int8, onnx or onnx-int8, not {backend!r}")
    script = Path(__file__).resolve().parents[2] / "bench" / "bench.py"
    if not script.is_file():
        raise fail(
            f"{script} not found", "zsc bench runs from a source checkout (pip install -e .)"
        )
    spec = importlib.util.spec_from_file_location("zsc_bench", script)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up while being built
    spec.loader.exec_module(bench)
    argv = [
        "--backend",
        backend,
        *(["--quick"] if quick else []),
        *(["--out", str(out)] if out else []),
    ]
    raise typer.Exit(bench.main(argv))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
