"""What every `zsc` command shares: the consoles, the connection options, errors as one line,
and the option types that several commands take."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

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
