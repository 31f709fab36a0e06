"""One `zsc bulk` run: check the input, skip what OUTPUT already holds, score the rest.

The pipeline is Ray Data's, streamed block by block: read each input file (one task per file,
rows numbered, finished ids dropped) -> blocks of `batch_rows` -> the actor pool of
`classify_dataset`, whose actors (PartWriter) also write each scored block as a part -> a count
per part, which the driver reads to drive the progress bar.
The checks run before Ray does any work, so a bad input costs a second, not a cluster start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from serve_app.bulk.actor import BulkTask
from serve_app.bulk.inputs import (
    ROW_COLUMN,
    InputFile,
    InputScan,
    check_scans,
    list_inputs,
    numbered,
    output_filesystem,
    read_batches,
    scan_file,
)
from serve_app.bulk.output import ERRORS_DIR, PartSink, PartWriter, done_ids, prepare_output
from serve_app.config import ModelConfig


@dataclass(frozen=True)
class BulkOptions:
    input: str
    output: str
    task: BulkTask
    settings: ModelConfig
    fmt: str = "parquet"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int | None = None
    batch_rows: int = 256


@dataclass
class BulkPlan:
    """What a run will do, known before Ray starts."""

    options: BulkOptions
    fs: pafs.FileSystem
    files: list[InputFile]
    out_fs: pafs.FileSystem
    out_dir: str
    id_column: str
    rows: int  # in the input
    done: pa.Array  # ids OUTPUT already holds
    skipped: int  # input rows among them
    earlier_errors: int

    @property
    def todo(self) -> int:
        return self.rows - self.skipped

    @property
    def errors_dir(self) -> str:
        return f"{self.options.output.rstrip('/')}/{ERRORS_DIR}"


@dataclass(frozen=True)
class BulkSummary:
    rows: int  # in the input
    skipped: int  # already in OUTPUT
    scored: int  # by this run
    errors: int  # unreadable rows found by this run
    earlier_errors: int  # and by earlier runs into the same OUTPUT
    seconds: float

    @property
    def rows_per_s(self) -> float:
        """Rows this run went through (scored or reported), per second."""
        return (self.scored + self.errors) / self.seconds if self.seconds > 0 else 0.0


def run_settings(options: BulkOptions, id_column: str) -> dict[str, Any]:
    """What must match for a rerun to resume into the same OUTPUT."""
    task, model = options.task, options.settings
    return {
        "labels": task.labels,
        "hypothesis_template": task.hypothesis_template,
        "multi_label": task.multi_label,
        "text_column": task.text_column,
        "id_column": id_column,
        "keep_text": task.keep_text,
        "format": options.fmt,
        "model": model.model,
        "revision": model.revision,
        "backend": model.backend,
        "max_length": model.max_length,
    }


def plan_bulk(options: BulkOptions) -> BulkPlan:
    """Scan the input and OUTPUT; BulkInputError (one line) for anything that stops the run."""
    task = options.task
    fs, files = list_inputs(options.input)
    scans = [scan_file(fs, f, task.text_column, task.id_column) for f in files]
    scan: InputScan = check_scans(files, scans, task.text_column, task.id_column)
    id_column = task.id_column or ROW_COLUMN
    out_fs, out_dir = output_filesystem(options.output)
    prepare_output(options.output, out_fs, out_dir, options.fmt, run_settings(options, id_column))
    done, earlier_errors = done_ids(out_fs, out_dir, id_column)
    ids = scan.ids if scan.ids is not None else pa.array(range(scan.rows), pa.int64())
    skipped = 0
    if len(done):
        if done.type != ids.type:
            done = done.cast(ids.type) if pa.types.is_null(done.type) else done
        skipped = int(pc.sum(pc.is_in(ids, value_set=done)).as_py() or 0)
    return BulkPlan(
        options, fs, scan.files, out_fs, out_dir, id_column, scan.rows, done, skipped,
        earlier_errors,
    )  # fmt: skip


def _read_files(
    batch: pa.Table, fs: pafs.FileSystem, text_column: str, id_column: str | None, done: pa.Array
) -> Iterator[pa.Table]:
    """Ray Data step: each input file's rows, numbered, without those OUTPUT already holds."""
    key = id_column or ROW_COLUMN
    for spec in batch.to_pylist():
        file = InputFile(spec["path"], spec["fmt"], spec["first_row"])
        for table in numbered(
            read_batches(fs, file, text_column, id_column), file.first_row, id_column
        ):
            if len(done):
                table = table.filter(pc.invert(pc.is_in(table.column(key), value_set=done)))
            if table.num_rows:
                yield table


def _blocks_of(ds: Any, rows: int) -> Any:
    """`ds.repartition(target_num_rows_per_block=rows)`, its tasks reserving no CPU.

    Blocks of `rows` rows: each actor task scores one and each is written as its part when it
    is done, so progress and resuming go part by part, not file by file. Ray 2.60's
    `repartition` gives its tasks one CPU each, which an actor pool holding every CPU of the
    cluster never frees (the run hangs), and takes no resource arguments: the logical operator
    is built here with them (Ray is pinned to 2.60.0; the public call is the fallback).
    """
    try:
        from ray.data import Dataset
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators import StreamingRepartition

        op = StreamingRepartition(
            target_num_rows_per_block=rows,
            input_dependencies=[ds._logical_plan.dag],
            ray_remote_args={"num_cpus": 0},
        )
        return Dataset._from_parent(ds, LogicalPlan(op, ds.context))
    except (ImportError, AttributeError, TypeError):
        return ds.repartition(target_num_rows_per_block=rows)


def bulk_dataset(plan: BulkPlan) -> Any:
    """The lazy Ray Data pipeline of a plan; each output row counts one written part."""
    import ray

    from serve_app.bulk.dataset import scoring_step

    options, task = plan.options, plan.options.task
    files = ray.data.from_items(
        [{"path": f.path, "fmt": f.fmt, "first_row": f.first_row} for f in plan.files],
        override_num_blocks=len(plan.files),
    )
    # Reading waits on I/O: it reserves no CPU, so an actor pool that takes every CPU can never
    # starve it.
    rows = files.map_batches(
        _read_files,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "fs": plan.fs, "text_column": task.text_column, "id_column": task.id_column,
            "done": plan.done,
        },
        num_cpus=0,
    )  # fmt: skip
    # The actors score each block and write it as its part: the step's output is the counts.
    sink = PartSink(plan.out_fs, plan.out_dir, options.fmt, plan.id_column)
    return scoring_step(
        _blocks_of(rows, options.batch_rows), PartWriter,
        (replace(task, id_column=plan.id_column), options.settings, sink),
        num_cpus=options.num_cpus, num_gpus=options.num_gpus, actors=options.actors,
        batch_rows=options.batch_rows,
    )  # fmt: skip


# Generous: an actor's start is a worker process, torch and the model (a minute on a busy node);
# past it the run stops with Ray Data's "Timed out while starting actors" instead of waiting.
POOL_START_TIMEOUT_S = 600


def run_bulk(plan: BulkPlan, on_rows: Callable[[int], None] = lambda n: None) -> BulkSummary:
    """Run a plan on the Ray this process is connected to; `on_rows` after each part."""
    from ray.data import DataContext

    context = DataContext.get_current()
    # zsc draws its own progress bar (rows/s, time left) from the parts written.
    context.enable_progress_bars = False
    # The pool is sized to the cluster: start every actor before the first block, or a short
    # run can end on the first node's actor while another node's is still starting.
    context.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    started = time.perf_counter()
    scored = errors = 0
    if plan.todo:
        for counts in bulk_dataset(plan).iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = int(pc.sum(counts.column("rows")).as_py() or 0)
            failed = int(pc.sum(counts.column("errors")).as_py() or 0)
            scored += rows - failed
            errors += failed
            on_rows(rows)
    return BulkSummary(
        plan.rows, plan.skipped, scored, errors, plan.earlier_errors, time.perf_counter() - started
    )
