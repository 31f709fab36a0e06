"""Classify a file against a running service: `zsc batch FILE -l ... -o out.jsonl`.

Input rows come from .txt (one text per line), .jsonl (a field of each object) or .csv (a
column). Each row keeps a stable index (its line in .txt/.jsonl, its record in .csv; blank lines
are skipped but still counted), so a rerun can tell which rows are done.

Output is one JSON line per input row, written in the order batches complete:
`{"row": i, "id"?: ..., "result": {"sequence", "labels", "scores"}, "truncated"?: true}`, or
`{"row": i, "id"?: ..., "error": {"type", "message"}}` for a row the service refused (an empty
or over-long text). Lines are written whole and flushed per batch, so a killed run leaves at
most one half-written last line; `done_rows` cuts it off and a rerun redoes only what is missing.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from serve_app.client.http import AsyncZeroShotClient, Label, ZscHTTPError

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".csv")
# Statuses that can be one text's fault (empty, too long); the preflight rules out the
# request-wide causes (labels, template, auth) before any row is sent.
ROW_ERROR_STATUSES = frozenset({413, 422})
PROBE_TEXT = "zsc batch preflight"


class BatchError(Exception):
    """A problem with the input or output file that stops the run before it starts."""


@dataclass(frozen=True)
class Row:
    index: int
    text: str | None
    id: Any = None
    # Why `text` is None: the row is written as an error without asking the service.
    problem: str | None = None


@dataclass(frozen=True)
class BatchSettings:
    labels: str | Sequence[Label]
    hypothesis_template: str
    multi_label: bool
    batch_size: int = 16
    concurrency: int = 4
    prefilter_top_k: int | None = None
    # long_text, chunk_stride, chunk_aggregate, threshold: the client's keyword arguments.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class BatchSummary:
    written: int = 0
    errors: int = 0
    warning: str | None = None


def read_rows(path: Path, text_field: str = "text", id_field: str = "id") -> list[Row]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return list(_txt_rows(path))
    if suffix == ".jsonl":
        return list(_jsonl_rows(path, text_field, id_field))
    if suffix == ".csv":
        return list(_csv_rows(path, text_field, id_field))
    raise BatchError(
        f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _txt_rows(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8", newline="") as f:
        for index, line in enumerate(f):
            text = line.rstrip("\r\n")
            if text.strip():
                yield Row(index, text)


def _jsonl_rows(path: Path, text_field: str, id_field: str) -> Iterator[Row]:
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Row(index, None, problem=f"line {index + 1} is not JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield Row(index, None, problem=f"line {index + 1} is not a JSON object")
                continue
            yield _field_row(index, record, text_field, id_field)


def _csv_rows(path: Path, text_field: str, id_field: str) -> Iterator[Row]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if text_field not in (reader.fieldnames or []):
            raise BatchError(
                f"{path}: no column {text_field!r} (columns: {', '.join(reader.fieldnames or [])}); "
                "name the text column with --text-field"
            )
        for index, record in enumerate(reader):
            yield _field_row(index, record, text_field, id_field)


def _field_row(index: int, record: dict[str, Any], text_field: str, id_field: str) -> Row:
    row_id = record.get(id_field)
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        return Row(
            index,
            None,
            row_id,
            problem=f"field {text_field!r} is missing or not a non-empty string",
        )
    return Row(index, text, row_id)


def done_rows(out: Path) -> set[int]:
    """Row indices already in `out`; cuts off a last line a killed run left half-written."""
    if not out.exists():
        return set()
    done: set[int] = set()
    with out.open("r+b") as f:
        good_end = 0
        line_no = 0
        while raw := f.readline():
            line_no += 1
            row = _row_of(raw)
            if row is None:
                if f.read(1):
                    raise BatchError(
                        f"{out}: line {line_no} is not a result line; fix or remove it, "
                        "or write to another file"
                    )
                f.truncate(good_end)
                break
            done.add(row)
            good_end += len(raw)
    return done


def _row_of(raw: bytes) -> int | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    row = record.get("row") if isinstance(record, dict) else None
    return row if isinstance(row, int) else None


def _record(row: Row, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"row": row.index}
    if row.id is not None:
        record["id"] = row.id
    record.update(fields)
    return record


def _error_record(row: Row, type_: str, message: str) -> dict[str, Any]:
    return _record(row, error={"type": type_, "message": message})


class _Writer:
    """Appends whole lines and flushes after each batch, so a kill cuts at most the last one."""

    def __init__(self, f: BinaryIO, summary: BatchSummary, on_rows: Callable[[int], None]):
        self.f = f
        self.summary = summary
        self.on_rows = on_rows

    def write(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        self.f.write(data)
        self.f.flush()
        self.summary.written += len(records)
        self.summary.errors += sum(1 for r in records if "error" in r)
        self.on_rows(len(records))


async def _classify_rows(
    client: AsyncZeroShotClient, rows: list[Row], settings: BatchSettings
) -> list[dict[str, Any]]:
    try:
        body = await client.classify(
            [row.text or "" for row in rows],
            settings.labels,
            settings.hypothesis_template,
            settings.multi_label,
            settings.prefilter_top_k,
            **settings.options,
        )
    except ZscHTTPError as exc:
        if exc.status not in ROW_ERROR_STATUSES:
            raise
        if len(rows) == 1:
            return [_error_record(rows[0], exc.type, exc.message)]
        # One bad text fails the whole request: send the rows one by one to find it.
        records: list[dict[str, Any]] = []
        for row in rows:
            records.extend(await _classify_rows(client, [row], settings))
        return records
    truncated = set(body.get("truncated") or [])
    return [
        _record(row, result=result, **({"truncated": True} if i in truncated else {}))
        for i, (row, result) in enumerate(zip(rows, body["results"]))
    ]


async def _preflight(client: AsyncZeroShotClient, settings: BatchSettings) -> str | None:
    """Send one fixed text, so errors of the whole request (labels, template, key) stop the run
    here instead of being written as an error on every row. Returns the service's warning."""
    body = await client.classify(
        PROBE_TEXT,
        settings.labels,
        settings.hypothesis_template,
        settings.multi_label,
        settings.prefilter_top_k,
        **settings.options,
    )
    return body.get("warning")


async def run_batch(
    client: AsyncZeroShotClient,
    pending: list[Row],
    out: Path,
    settings: BatchSettings,
    on_rows: Callable[[int], None] = lambda n: None,
) -> BatchSummary:
    """Classify `pending` (the rows not yet in `out`, see `done_rows`) and append their lines."""
    summary = BatchSummary()
    if not pending:
        return summary
    summary.warning = await _preflight(client, settings)

    with out.open("ab") as f:
        writer = _Writer(f, summary, on_rows)
        unreadable = [row for row in pending if row.text is None]
        if unreadable:
            writer.write(
                [_error_record(row, "invalid_input", row.problem or "") for row in unreadable]
            )
        sendable = [row for row in pending if row.text is not None]
        size = settings.batch_size
        batches = iter([sendable[i : i + size] for i in range(0, len(sendable), size)])

        async def worker() -> None:
            # Workers share one iterator: each takes the next batch when it is free, which
            # bounds the requests in flight to `concurrency`.
            for batch in batches:
                writer.write(await _classify_rows(client, batch, settings))

        tasks = [asyncio.create_task(worker()) for _ in range(settings.concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            # On the first failure stop the other workers; what they wrote stays for a rerun.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return summary
