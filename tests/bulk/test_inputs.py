"""`zsc bulk` without Ray: the checks that stop a run before it starts (one line, exit 2), the
reader's row numbers, and the Ray Data actor class called directly on Arrow batches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from serve_app.bulk.actor import BulkClassifier, bulk_task
from serve_app.bulk.inputs import list_inputs, numbered, read_batches
from serve_app.cli.main import app
from serve_app.config import ModelConfig
from serve_app.core.errors import ClientError

LABELS = "sports,weather,finance"


def bulk(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bulk", *args])
    return result.exit_code, result.output


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["x one", "y two", "z three"]}), path)
    return path


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--labels", " , "], "labels is empty"),
        (["--labels", LABELS, "--text-column", "body"], "has no column 'body'"),
        (["--labels", LABELS, "--id-column", "id"], "occur more than once (e.g. 'a', 2 times)"),
        (["--labels", LABELS, "--id-column", "key"], "has no column 'key'"),
        (["--labels", LABELS, "-t", "no braces"], "exactly one '{}'"),
        (["--labels", LABELS, "--format", "csv"], "--format must be parquet or jsonl"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    table: Path, tmp_path: Path, tiny_model_dir: Path, extra: list[str], says: str
) -> None:
    code, output = bulk(str(table), str(tmp_path / "out"), "--model", str(tiny_model_dir), *extra)
    assert code == 2, output
    assert says in output, output
    assert output.count("error:") == 1 and "Traceback" not in output


def test_a_missing_input_or_model_is_status_2(tmp_path: Path, tiny_model_dir: Path) -> None:
    code, output = bulk(str(tmp_path / "nope.parquet"), str(tmp_path / "o"), "-l", LABELS,
                        "--model", str(tiny_model_dir))  # fmt: skip
    assert code == 2 and "no such file or directory" in output, output
    code, output = bulk(str(tmp_path / "*.csv"), str(tmp_path / "o"), "-l", LABELS,
                        "--model", str(tiny_model_dir))  # fmt: skip
    assert code == 2 and "no file matches" in output, output
    (tmp_path / "t.parquet").write_bytes(b"")
    code, output = bulk(str(tmp_path / "t.parquet"), str(tmp_path / "o"), "-l", LABELS,
                        "--model", str(tmp_path / "no-model"))  # fmt: skip
    assert code == 2 and "does not exist" in output, output


def test_a_rerun_with_other_settings_is_refused(
    table: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "_zsc_bulk.json").write_text(json.dumps({"labels": ["other"]}))
    code, output = bulk(str(table), str(out), "-l", LABELS, "--model", str(tiny_model_dir))
    assert code == 2 and "holds results of another run" in output and "labels" in output, output


def test_rows_are_numbered_across_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("text\nb0\nb1\n")
    (tmp_path / "a.jsonl").write_text('{"text": "a0"}\nnot json\n{"text": 5}\n')
    (tmp_path / "_ignored.csv").write_text("text\nx\n")
    fs, files = list_inputs(str(tmp_path))
    assert [Path(f.path).name for f in files] == ["a.jsonl", "b.csv"]
    rows = []
    first = 0
    for file in files:
        tables = list(numbered(read_batches(fs, file, "text", None), first, None))
        rows += [r for t in tables for r in t.to_pylist()]
        first += sum(t.num_rows for t in tables)
    assert [(r["row"], r["text"]) for r in rows] == [
        (0, "a0"), (1, None), (2, None), (3, "b0"), (4, "b1"),
    ]  # fmt: skip
    assert rows[1]["error"] == "line 2 is not JSON"
    assert rows[2]["error"] == "text is a int, not a string"


def test_an_empty_label_list_is_a_client_error() -> None:
    with pytest.raises(ClientError, match="labels is empty"):
        bulk_task([])


def test_the_actor_scores_like_the_pipeline_and_reports_bad_rows(tiny_model_dir: Path) -> None:
    from transformers import pipeline

    task = bulk_task(LABELS, "It is about {}.", multi_label=True, id_column="id")
    actor = BulkClassifier(task, ModelConfig(model=str(tiny_model_dir)))
    texts = ["rain all week and wind", None, "", "the match ended " * 40, "stocks fell"]
    batch = pa.table({"id": [10, 11, 12, 13, 14], "text": pa.array(texts, pa.string())})
    out = actor(batch).to_pylist()
    assert [r["id"] for r in out] == [10, 11, 12, 13, 14]
    assert [r["error"] for r in out] == [None, "text is null", "text is empty", None, None]
    assert out[1]["labels"] is None and out[1]["scores"] is None
    assert [r["truncated"] for r in out] == [False, False, False, True, False]
    reference = pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")
    for row in (out[0], out[3], out[4]):
        want = reference(
            row["text"], candidate_labels=LABELS, hypothesis_template="It is about {}.",
            multi_label=True,
        )  # fmt: skip
        assert row["labels"] == want["labels"]
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_the_writing_actor_writes_what_the_scorer_answers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`zsc bulk`'s actor: one call scores a block, writes its scored rows as one part and its
    unscored ones as one error part, and answers the counts."""
    import pyarrow.fs as pafs

    from serve_app.bulk.output import PartSink, PartWriter

    task = bulk_task(LABELS, id_column="id")
    settings = ModelConfig(model=str(tiny_model_dir))
    batch = pa.table({"id": [1, 2, 3], "text": pa.array(["rain", None, "stocks"], pa.string())})
    scored = BulkClassifier(task, settings)(batch).to_pylist()
    out = tmp_path / "out"
    out.mkdir()
    sink = PartSink(pafs.LocalFileSystem(), str(out), "parquet", "id")
    counts = PartWriter(task, settings, sink)(batch).to_pylist()
    assert counts == [{"rows": 3, "errors": 1}]
    (part,) = out.glob("part-*.parquet")
    (errors,) = (out / "_errors").glob("part-*.jsonl")
    assert part.stem == errors.stem  # one block, one name
    assert pq.read_table(part).to_pylist() == [
        {k: v for k, v in row.items() if k != "error"} for row in scored if row["error"] is None
    ]
    assert [json.loads(line) for line in errors.read_text().splitlines()] == [
        {"id": 2, "error": "text is null"}
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
