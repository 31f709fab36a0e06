"""The Ray Data actor: one `Engine` (as the Serve Classifier holds) scoring Arrow batches.

No Ray here: Ray Data constructs the class once per actor and calls it with each batch, and a
test can do the same. A batch's valid texts go through `Engine.classify` together (tokenize,
de-duplicate, length-sorted sub-batches, the backend, the pipeline's math); a row whose text
cannot be read (null, not a string, empty) is answered with an `error` instead, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from serve_app.config import DEFAULT_TEMPLATE, ModelConfig
from serve_app.core.errors import ClientError
from serve_app.core.nli import parse_labels
from serve_app.core.requests import PreparedRequest, validate_template
from serve_app.engine.backends import backend_type
from serve_app.engine.engine import Engine
from serve_app.engine.source import resolve_model_source

# Why a row was not scored (null when it was). A reader may set it already (a JSONL line that
# is not JSON, say); the actor then passes it on.
ERROR_COLUMN = "error"
LABELS_TYPE = pa.list_(pa.string())
SCORES_TYPE = pa.list_(pa.float64())


@dataclass(frozen=True)
class BulkTask:
    """What to score: the labels and how, and which columns carry what."""

    labels: list[str]
    hypothesis_template: str = DEFAULT_TEMPLATE
    multi_label: bool = False
    text_column: str = "text"
    id_column: str | None = None
    keep_text: bool = True


def bulk_task(
    labels: str | Sequence[str],
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    text_column: str = "text",
    id_column: str | None = None,
    keep_text: bool = True,
) -> BulkTask:
    """A validated task; ClientError names what to fix (no labels, a template without {})."""
    label_list = parse_labels(labels)
    if not label_list or not all(isinstance(label, str) and label.strip() for label in label_list):
        raise ClientError("labels is empty: give at least one label (e.g. --labels a,b,c)")
    validate_template(hypothesis_template)
    return BulkTask(label_list, hypothesis_template, multi_label, text_column, id_column, keep_text)


def model_source(settings: ModelConfig) -> str:
    """The directory to load: a local one as is, a hub id resolved here, on this node."""
    if Path(settings.model).expanduser().is_dir():
        return str(Path(settings.model).expanduser().resolve())
    files = backend_type(settings.backend).files(settings.onnx_file)
    return resolve_model_source(settings.model, settings.revision, files)


def text_problem(text: object) -> str | None:
    """Why a cell cannot be classified, or None when it can."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return "text is empty"
    return None


class BulkClassifier:
    """`ds.map_batches(BulkClassifier, fn_constructor_args=(task, settings), batch_format="pyarrow")`."""

    def __init__(
        self, task: BulkTask, settings: ModelConfig, cpu_budget: float | None = None
    ) -> None:
        self.task = task
        self.engine = Engine(settings, model_source(settings), cpu_budget)
        # Hypotheses too long for the window fail here, once, not on every batch.
        self.engine.check_labels(self._request([]))
        self.engine.warm_up()

    def _request(self, texts: list[str]) -> PreparedRequest:
        task = self.task
        return PreparedRequest(texts, task.labels, task.hypothesis_template, task.multi_label)

    def __call__(self, batch: pa.Table) -> pa.Table:
        task = self.task
        texts = batch.column(task.text_column).to_pylist()
        given = (
            batch.column(ERROR_COLUMN).to_pylist()
            if ERROR_COLUMN in batch.column_names
            else [None] * len(texts)
        )
        errors = [given_error or text_problem(text) for text, given_error in zip(texts, given)]
        good = [i for i, error in enumerate(errors) if error is None]
        answer = self.engine.classify(self._request([texts[i] for i in good]))
        labels: list[list[str] | None] = [None] * len(texts)
        scores: list[list[float] | None] = [None] * len(texts)
        truncated = [False] * len(texts)
        for i, result in zip(good, answer.results):
            labels[i], scores[i] = result.labels, result.scores
        for j in answer.truncated:
            truncated[good[j]] = True
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        if task.id_column is not None:
            columns[task.id_column] = batch.column(task.id_column)
        if task.keep_text:
            columns[task.text_column] = pa.array(
                [t if isinstance(t, str) else None for t in texts], pa.string()
            )
        columns["labels"] = pa.array(labels, LABELS_TYPE)
        columns["scores"] = pa.array(scores, SCORES_TYPE)
        columns["truncated"] = pa.array(truncated, pa.bool_())
        columns[ERROR_COLUMN] = pa.array(errors, pa.string())
        return pa.table(columns)
