"""What every `zsc` command shares: the consoles, the connection options, errors as one line,
and the option types that several commands take."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from serve_app.client.http import DEFAULT_URL, ZeroShotClient, ZscHTTPError

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
    if result.get("windows") is not None:
        table.title = f"{title} ({result['windows']} windows)"
    predicted = result.get("predicted")
    for label, score in zip(result["labels"], result["scores"]):
        mark = " *" if predicted is not None and label in predicted else ""
        table.add_row(label + mark, f"{score:.4f}", Bar(1.0, 0.0, score, width=30, color="cyan"))
    if predicted is not None:
        table.caption = "predicted: " + (", ".join(predicted) or "none of these")
        table.caption_justify = "left"
    return table


def read_labels_file(path: Path) -> list[str | dict[str, str]]:
    """Labels from a file: one per line, `label<TAB>hypothesis`, or a JSON object per line
    ({"label": ..., "hypothesis": ...}); blank lines are skipped."""
    labels: list[str | dict[str, str]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read --labels-file {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise fail(f"{path}:{number}: not a JSON object: {exc}") from None
            if not isinstance(item, dict):
                raise fail(f"{path}:{number}: expected a JSON object with 'label'")
            labels.append(item)
        elif "\t" in line:
            label, hypothesis = line.split("\t", 1)
            labels.append({"label": label.strip(), "hypothesis": hypothesis.strip()})
        else:
            labels.append(line.strip())
    if not labels:
        raise fail(f"--labels-file {path} holds no labels")
    return labels


def pick_labels(labels: str | None, labels_file: Path | None) -> str | list[str | dict[str, str]]:
    """`--labels` or `--labels-file`: exactly one."""
    if (labels is None) == (labels_file is None):
        raise fail("give exactly one of --labels (comma-separated) or --labels-file FILE")
    if labels_file is not None:
        return read_labels_file(labels_file)
    assert labels is not None
    return labels


def request_options(
    long_text: str | None,
    chunk_stride: int | None,
    chunk_aggregate: str | None,
    threshold: float | None,
) -> dict[str, Any]:
    """The long-text and threshold keyword arguments of the client's calls."""
    return {
        "long_text": long_text,
        "chunk_stride": chunk_stride,
        "chunk_aggregate": chunk_aggregate,
        "threshold": threshold,
    }


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
LabelsOption = Annotated[
    str | None,
    typer.Option("--labels", "-l", help="Candidate labels, comma-separated (or --labels-file)."),
]
LabelsFileOption = Annotated[
    Path | None,
    typer.Option(
        "--labels-file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Labels, one per line: a name, 'name<TAB>hypothesis', or a JSON object "
        '{"label": ..., "hypothesis": ...}.',
    ),
]
LongTextOption = Annotated[
    Literal["truncate", "chunk"] | None,
    typer.Option(
        "--long-text",
        help="truncate: cut long texts to the model's window; chunk: score them in windows "
        "(default: the server's).",
    ),
]
ChunkStrideOption = Annotated[
    int | None,
    typer.Option("--chunk-stride", min=0, help="With chunk: tokens of overlap between windows."),
]
ChunkAggregateOption = Annotated[
    Literal["max", "mean"] | None,
    typer.Option("--chunk-aggregate", help="With chunk: combine window scores by max or mean."),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        min=0.0,
        max=1.0,
        help="0 to 1: mark the labels scoring at least this as predicted (single-label: the "
        "top one, if it does).",
    ),
]
