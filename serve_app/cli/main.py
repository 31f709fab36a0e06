"""The `zsc` command line: one module per command group, assembled here.

`classify` and `batch` (serve_app/cli/classify.py), `bulk` (bulk.py, a table on Ray Data),
`job ...` (jobs.py), the tools beside the
service (tools.py: `make-test-model`, `export onnx`, `hash-key`, `bench`) and `k8s`
(serve_app/devtools/kube.py). Every command that talks to a service goes through
`serve_app.client.http`, so the CLI resends what did not complete exactly as Python callers do.
Results go to stdout (a table, or JSON with `--json`); progress, warnings and errors to stderr.
"""

from __future__ import annotations

import typer

from serve_app.cli import classify, jobs, tools
from serve_app.cli.bulk import bulk
from serve_app.cli.common import connection_options
from serve_app.devtools.kube import kube_app

app = typer.Typer(help="zsc: zero-shot text classification on Ray Serve.", no_args_is_help=True)
app.callback()(connection_options)
app.command("classify")(classify.classify)
app.command("batch")(classify.batch)
app.command("bulk")(bulk)
app.add_typer(jobs.job_app, name="job")
app.command("make-test-model")(tools.make_test_model)
app.add_typer(tools.export_app, name="export")
app.command("hash-key")(tools.hash_key_command)
app.command("bench")(tools.bench_command)
app.add_typer(kube_app, name="k8s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
