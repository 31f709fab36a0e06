"""`classify_dataset`: zero-shot scoring as one step of any Ray Data pipeline.

The step is `map_batches` over a pool of `BulkClassifier` actors (`ActorPoolStrategy`; the
`concurrency=` argument is deprecated in Ray 2.60), each loading the model once on its node and
reserving `num_cpus` CPUs (and `num_gpus` of a GPU). Without `actors`, the pool is what the
cluster's CPUs (or GPUs) hold at that reservation when the step is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ray
from ray.data import ActorPoolStrategy, Dataset

from serve_app.bulk.actor import BulkClassifier, bulk_task
from serve_app.config import DEFAULT_TEMPLATE, ModelConfig

DEFAULT_BATCH_ROWS = 256


def pool_size(num_cpus: float, num_gpus: float) -> int:
    """Actors the cluster's resources hold at this reservation (at least one)."""
    resources = ray.cluster_resources()
    if num_gpus > 0:
        return max(1, math.floor(resources.get("GPU", 0.0) / num_gpus + 1e-9))
    if num_cpus <= 0:
        return 1
    return max(1, math.floor(resources.get("CPU", 1.0) / num_cpus + 1e-9))


def classify_dataset(
    ds: Dataset,
    labels: str | Sequence[str],
    *,
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    text_column: str = "text",
    id_column: str | None = None,
    keep_text: bool = True,
    model: ModelConfig | str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    actors: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    **ray_remote_args: Any,
) -> Dataset:
    """Score every row's `text_column` against `labels`; lazily, like every Ray Data step.

    Each output row holds `id_column` (when given), the text (unless `keep_text=False`),
    `labels` and `scores` (lists, highest score first, exactly as `transformers`' zero-shot
    pipeline orders them), `truncated` (the text was cut to the model's window) and `error`:
    null, or why the row was not scored (a null, non-string or empty text; its labels and
    scores are then null). Ray Data does not keep row order: carry an id column.

    `model` is a `ModelConfig` (backend torch, int8 or onnx, threads, ...) or a model id or
    directory. A local directory must exist on every node; a hub id is downloaded on each node.
    `batch_rows` rows go through the engine at once (its length-sorted sub-batches are cut from
    them). Raises ClientError for an empty label list or a bad template.
    """
    task = bulk_task(labels, hypothesis_template, multi_label, text_column, id_column, keep_text)
    if model is None:
        settings = ModelConfig()
    elif isinstance(model, str):
        settings = ModelConfig(model=model)
    else:
        settings = model
    return scoring_step(
        ds, BulkClassifier, (task, settings), num_cpus=num_cpus, num_gpus=num_gpus,
        actors=actors, batch_rows=batch_rows, **ray_remote_args,
    )  # fmt: skip


def scoring_step(
    ds: Dataset,
    actor: type[BulkClassifier],
    constructor_args: tuple[Any, ...],
    *,
    num_cpus: float,
    num_gpus: float,
    actors: int | None,
    batch_rows: int,
    **ray_remote_args: Any,
) -> Dataset:
    """`map_batches` over a fixed pool of `actor` (BulkClassifier or a subclass), built with
    `constructor_args`: `classify_dataset`'s step, and `zsc bulk`'s, whose actor also writes."""
    size = actors or pool_size(num_cpus, num_gpus)
    # Ray Data queues up to 4 batches on an actor by default, and an autoscaling pool lets an
    # actor go as soon as every batch is handed out (or when half the pool is between
    # batches) and, one batch in flight each, never grows back. Measured on 2 CPUs: the first
    # actor up took every batch of a short run while the second loaded the model and was let
    # go, so one core did all the work. So: a fixed pool (its actors start together; batches
    # go to those running while the rest wait for room), one batch at a time per CPU actor
    # (a CPU batch takes seconds to minutes), two on a GPU (a batch takes well under a
    # second: the next one is fetched while it runs).
    in_flight = 2 if num_gpus > 0 else 1
    return ds.map_batches(
        actor,
        fn_constructor_args=constructor_args,
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=in_flight),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        **ray_remote_args,
    )
