"""`zsc bulk`'s output: a directory of parts, each written whole or not at all.

A part holds one batch of scored rows (`part-<uuid>.parquet` or `.jsonl`); the rows that could
not be scored go to `_errors/part-<uuid>.jsonl` with their id and the reason. Each file is
written under a temporary name and renamed when complete, so after an interrupted run every
part present is whole: a rerun reads the ids of the parts (and error parts) and skips them, and
the output ends up holding every id exactly once. `_zsc_bulk.json` records the settings, so a
rerun with other labels or another model cannot mix two kinds of result. Readers of Parquet
datasets (pyarrow, pandas, Ray Data) skip names starting with `_` or `.`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from serve_app.bulk.actor import ERROR_COLUMN, BulkClassifier, BulkTask
from serve_app.bulk.inputs import BulkInputError
from serve_app.config import ModelConfig

ERRORS_DIR = "_errors"
SETTINGS_FILE = "_zsc_bulk.json"
TMP_PREFIX = ".tmp-"
EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def _write_atomic(fs: pafs.FileSystem, directory: str, name: str, write: Any) -> None:
    tmp = f"{directory}/{TMP_PREFIX}{name}"
    write(tmp)
    fs.move(tmp, f"{directory}/{name}")


def _jsonl_writer(fs: pafs.FileSystem, rows: list[dict[str, Any]]) -> Any:
    def write(path: str) -> None:
        with fs.open_output_stream(path) as out:
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())

    return write


def write_part(
    batch: pa.Table, fs: pafs.FileSystem, directory: str, fmt: str, id_column: str
) -> pa.Table:
    """Write one scored batch as a part (and its unscored rows as an error part); answer the
    counts, which the driver reads to show progress."""
    name = f"part-{uuid.uuid4().hex}"
    failed = pc.is_valid(batch.column(ERROR_COLUMN))
    bad = batch.filter(failed)
    good = batch.filter(pc.invert(failed)).drop_columns([ERROR_COLUMN])
    if bad.num_rows:
        rows = [
            {id_column: row[id_column], ERROR_COLUMN: row[ERROR_COLUMN]}
            for row in bad.select([id_column, ERROR_COLUMN]).to_pylist()
        ]
        errors_dir = f"{directory}/{ERRORS_DIR}"
        fs.create_dir(errors_dir, recursive=True)
        _write_atomic(fs, errors_dir, name + ".jsonl", _jsonl_writer(fs, rows))
    if good.num_rows:
        if fmt == "parquet":
            _write_atomic(
                fs, directory, name + ".parquet", lambda p: pq.write_table(good, p, filesystem=fs)
            )
        else:
            _write_atomic(fs, directory, name + ".jsonl", _jsonl_writer(fs, good.to_pylist()))
    return pa.table({"rows": [batch.num_rows], "errors": [bad.num_rows]})


@dataclass(frozen=True)
class PartSink:
    """Where a run's parts go."""

    fs: pafs.FileSystem
    directory: str
    fmt: str
    id_column: str


class PartWriter(BulkClassifier):
    """`zsc bulk`'s actor: scores a block and writes it as its part in the same call, answering
    the counts. A separate write step would be a Ray task per part, in worker processes of its
    own (a Ray Data task cannot be fused after an actor pool), with every scored block carried
    to it through the object store."""

    def __init__(
        self, task: BulkTask, settings: ModelConfig, sink: PartSink, cpu_budget: float | None = None
    ) -> None:
        super().__init__(task, settings, cpu_budget)
        self.sink = sink

    def __call__(self, batch: pa.Table) -> pa.Table:
        sink = self.sink
        return write_part(
            super().__call__(batch), sink.fs, sink.directory, sink.fmt, sink.id_column
        )


def _part_files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return [i for i in infos if i.is_file and i.base_name.startswith("part-")]


def _ids(fs: pafs.FileSystem, path: str, id_column: str) -> pa.Array:
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            return pq.read_table(f, columns=[id_column]).column(0).combine_chunks()
    with fs.open_input_stream(path) as f:
        table = pajson.read_json(f)
    return table.column(id_column).combine_chunks()


def prepare_output(
    location: str, fs: pafs.FileSystem, directory: str, fmt: str, settings: dict[str, Any]
) -> None:
    """Create the directory, or check an existing one was written with the same settings;
    remove parts some interrupted run left half-written."""
    info = fs.get_file_info(directory)
    if info.type == pafs.FileType.File:
        raise BulkInputError(f"OUTPUT {location} is a file: give a directory (new or earlier)")
    fs.create_dir(directory, recursive=True)
    settings_path = f"{directory}/{SETTINGS_FILE}"
    if fs.get_file_info(settings_path).type == pafs.FileType.File:
        with fs.open_input_stream(settings_path) as f:
            earlier = json.loads(f.read())
        if earlier != settings:
            changed = sorted(
                k for k in settings.keys() | earlier.keys() if settings.get(k) != earlier.get(k)
            )
            raise BulkInputError(
                f"{location} holds results of another run ({', '.join(changed)} differ): rerun "
                "with the same settings to resume, or give a new OUTPUT"
            )
    else:
        others = [
            i for i in _part_files(fs, directory) if not i.base_name.endswith(EXTENSIONS[fmt])
        ]
        if others:
            raise BulkInputError(f"{location} already holds other files ({others[0].base_name})")
        with fs.open_output_stream(settings_path) as f:
            f.write(json.dumps(settings, indent=2, sort_keys=True).encode())
    for sub in (directory, f"{directory}/{ERRORS_DIR}"):
        for stale in fs.get_file_info(pafs.FileSelector(sub, allow_not_found=True)):
            if stale.is_file and stale.base_name.startswith(TMP_PREFIX):
                fs.delete_file(stale.path)


def done_ids(fs: pafs.FileSystem, directory: str, id_column: str) -> tuple[pa.Array, int]:
    """Every id a complete part (scored or error) already holds, and how many were errors."""
    scored = [_ids(fs, i.path, id_column) for i in _part_files(fs, directory)]
    errors = [_ids(fs, i.path, id_column) for i in _part_files(fs, f"{directory}/{ERRORS_DIR}")]
    arrays = [a for a in scored + errors if len(a)]
    if not arrays:
        return pa.array([], pa.null()), 0
    common = arrays[0].type
    try:
        ids = pa.chunked_array([a.cast(common) for a in arrays]).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ids = pa.array([str(v) for a in arrays for v in a.to_pylist()], pa.string())
    return ids, sum(len(a) for a in errors)
