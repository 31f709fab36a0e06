"""`zsc bulk`'s input: files found from a path, directory or glob on any pyarrow filesystem,
read in Arrow batches that carry a stable row number.

Each file is read by one task (streamed in batches), so a row's number (the rows of the files
before it plus its place in its file) is the same on every run: that is what makes resuming by
row number safe. A scan before the run reads only what the checks need (the column names, the
row count, the id column) and fails with one line on a missing file or column, null or
duplicate ids. JSONL is parsed line by line, so one bad line is one unreadable row (reported
with its row number), not an unreadable file.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serve_app.bulk.actor import ERROR_COLUMN

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl",
           ".ndjson": "jsonl", ".csv": "csv"}  # fmt: skip
ROW_COLUMN = "row"
READ_BATCH_ROWS = 8192


class BulkInputError(ValueError):
    """Input or settings `zsc bulk` cannot run on; the message says what to fix."""


@dataclass(frozen=True)
class InputFile:
    path: str
    fmt: str
    first_row: int = 0  # the row number of its first row


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowException, ValueError) as exc:
            raise BulkInputError(f"cannot open {location}: {exc}") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().absolute())


def output_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    return _filesystem(location)


def file_format(path: str) -> str | None:
    return FORMATS.get(posixpath.splitext(path)[1].lower())


def list_inputs(location: str) -> tuple[pafs.FileSystem, list[InputFile]]:
    """The files of a path, a directory (its Parquet, JSONL and CSV files) or a glob, sorted."""
    fs, path = _filesystem(location)
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rpartition("/")[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        paths = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
        if not paths:
            raise BulkInputError(f"no file matches {location}")
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise BulkInputError(f"{location}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            paths = [
                i.path
                for i in infos
                if i.is_file
                and file_format(i.path)
                and not any(part.startswith((".", "_")) for part in i.path[len(path) :].split("/"))
            ]
            if not paths:
                raise BulkInputError(f"{location} holds no .parquet, .jsonl or .csv file")
        else:
            paths = [path]
    files = []
    for p in sorted(paths):
        fmt = file_format(p)
        if fmt is None:
            raise BulkInputError(f"{p}: unknown format; name it .parquet, .jsonl or .csv")
        files.append(InputFile(p, fmt))
    return fs, files


# --- reading -------------------------------------------------------------------------------


def _jsonl_batches(
    fs: pafs.FileSystem, path: str, text_column: str, id_column: str | None
) -> Iterator[pa.Table]:
    texts: list[Any] = []
    ids: list[Any] = []
    errors: list[str | None] = []

    def flush() -> pa.Table:
        columns: dict[str, Any] = {}
        if id_column is not None:
            columns[id_column] = _id_array(ids)
        columns[text_column] = pa.array(texts, pa.string())
        columns[ERROR_COLUMN] = pa.array(errors, pa.string())
        texts.clear()
        ids.clear()
        errors.clear()
        return pa.table(columns)

    with fs.open_input_stream(path) as raw:
        data = raw.read().decode("utf-8", errors="replace")
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        error = None
        try:
            record = json.loads(line)
        except ValueError:
            record, error = None, f"line {number} is not JSON"
        if record is not None and not isinstance(record, dict):
            record, error = None, f"line {number} is not a JSON object"
        record = record or {}
        text = record.get(text_column)
        if error is None and text_column not in record:
            error = f"line {number} has no field {text_column!r}"
        elif error is None and text is not None and not isinstance(text, str):
            error = f"text is a {type(text).__name__}, not a string"
        texts.append(text if isinstance(text, str) else None)
        ids.append(record.get(id_column) if id_column else None)
        errors.append(error)
        if len(texts) >= READ_BATCH_ROWS:
            yield flush()
    if texts:
        yield flush()


def _id_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: compare them as strings
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def read_batches(
    fs: pafs.FileSystem, file: InputFile, text_column: str, id_column: str | None
) -> Iterator[pa.Table]:
    """The file's rows in batches: the id (or row number), the text, and a reader's error."""
    columns = [text_column] if id_column is None else [id_column, text_column]
    if file.fmt == "parquet":
        with fs.open_input_file(file.path) as f:
            reader = pq.ParquetFile(f)
            for record_batch in reader.iter_batches(READ_BATCH_ROWS, columns=columns):
                yield pa.Table.from_batches([record_batch])
            return
    elif file.fmt == "csv":
        convert = pacsv.ConvertOptions(
            include_columns=columns, column_types={text_column: pa.string()}
        )
        with fs.open_input_stream(file.path) as f:
            reader = pacsv.open_csv(f, convert_options=convert)
            for record_batch in reader:
                yield pa.Table.from_batches([record_batch])
        return
    yield from _jsonl_batches(fs, file.path, text_column, id_column)


def numbered(
    tables: Iterator[pa.Table], first_row: int, id_column: str | None
) -> Iterator[pa.Table]:
    """Prepend the row number column when rows have no id of their own."""
    row = first_row
    for table in tables:
        if id_column is None:
            table = table.add_column(
                0, ROW_COLUMN, pa.array(range(row, row + table.num_rows), pa.int64())
            )
        row += table.num_rows
        yield table


# --- the scan before a run -----------------------------------------------------------------


@dataclass(frozen=True)
class FileScan:
    rows: int
    columns: list[str]
    ids: pa.Array | None


def scan_file(
    fs: pafs.FileSystem, file: InputFile, text_column: str, id_column: str | None
) -> FileScan:
    """Row count and column names; the id column's values when there is one."""
    try:
        if file.fmt == "parquet":
            with fs.open_input_file(file.path) as f:
                reader = pq.ParquetFile(f)
                names = reader.schema_arrow.names
                ids = None
                if id_column is not None and id_column in names:
                    ids = pa.chunked_array(
                        [b.column(0) for b in reader.iter_batches(columns=[id_column])],
                        reader.schema_arrow.field(id_column).type,
                    ).combine_chunks()
                return FileScan(reader.metadata.num_rows, names, ids)
        if file.fmt == "csv":
            with fs.open_input_stream(file.path) as f:
                table = pacsv.read_csv(
                    f, convert_options=pacsv.ConvertOptions(column_types={text_column: pa.string()})
                )
            ids = (
                table.column(id_column).combine_chunks()
                if id_column in table.column_names
                else None
            )
            return FileScan(table.num_rows, table.column_names, ids)
        keys: set[str] = set()
        id_values: list[Any] = []
        rows = 0
        with fs.open_input_stream(file.path) as raw:
            data = raw.read().decode("utf-8", errors="replace")
        for line in data.splitlines():
            if not line.strip():
                continue
            rows += 1
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                keys.update(record)
                id_values.append(record.get(id_column) if id_column else None)
            else:
                id_values.append(None)
        ids = _id_array(id_values) if id_column in keys else None
        return FileScan(rows, sorted(keys), ids)
    except (OSError, pa.ArrowException) as exc:
        raise BulkInputError(f"cannot read {file.path}: {exc}") from None


@dataclass(frozen=True)
class InputScan:
    files: list[InputFile]  # with their first row numbers
    rows: int
    ids: pa.Array | None  # every id, when an id column is used


def check_scans(
    files: list[InputFile], scans: list[FileScan], text_column: str, id_column: str | None
) -> InputScan:
    """Fail with one line on a missing column or a null or duplicate id; number the files."""
    numbered_files = []
    row = 0
    for file, scan in zip(files, scans):
        for column in filter(None, [text_column, id_column]):
            if column not in scan.columns:
                shown = ", ".join(scan.columns[:20]) or "none"
                raise BulkInputError(
                    f"{file.path} has no column {column!r} (its columns: {shown}); "
                    f"name it with --{'text' if column == text_column else 'id'}-column"
                )
        numbered_files.append(InputFile(file.path, file.fmt, row))
        row += scan.rows
    if id_column is None:
        return InputScan(numbered_files, row, None)
    ids = (
        pa.chunked_array([s.ids for s in scans if s.ids is not None]).combine_chunks()
        if scans
        else pa.array([])
    )
    if ids.null_count:
        raise BulkInputError(
            f"{ids.null_count} rows have no {id_column!r}: every row needs an id with --id-column"
        )
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0].as_py()
        raise BulkInputError(
            f"{len(repeated)} ids in column {id_column!r} occur more than once (e.g. "
            f"{first['values']!r}, {first['counts']} times): ids must be unique"
        )
    return InputScan(numbered_files, row, ids)
