"""A job as the store keeps it and the API shows it: one definition of the view."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from serve_app.core.results import TextResult

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DeliveryState = Literal["pending", "delivered", "failed"]


class JobProgress(BaseModel):
    total_texts: int
    completed_texts: int
    total_chunks: int
    completed_chunks: int


class JobError(BaseModel):
    type: str
    message: str


class DeliveryAttempt(BaseModel):
    attempt: int
    at: float
    status_code: int | None
    error: str | None


class WebhookDelivery(BaseModel):
    event_id: str
    event_type: str
    url: str
    state: DeliveryState
    created_at: float
    next_attempt_at: float | None
    finished_at: float | None
    attempts: list[DeliveryAttempt]


class Job(BaseModel):
    """A job; timestamps are Unix seconds, null until the job reaches that state."""

    id: str
    object: Literal["job"] = "job"
    state: JobState
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancelled_at: float | None
    labels: list[str]
    hypothesis_template: str
    multi_label: bool
    prefilter_top_k: int | None = None
    # Per label, its own hypothesis (null: the template's); null when no label has one.
    label_hypotheses: list[str | None] | None = None
    long_text: Literal["truncate", "chunk"] = "truncate"
    chunk_stride: int = 0
    chunk_aggregate: Literal["max", "mean"] = "max"
    threshold: float | None = None
    progress: JobProgress
    callback_url: str | None
    metadata: dict[str, Any] | None
    error: JobError | None
    deliveries: list[WebhookDelivery]


class ResultsPage(BaseModel):
    page: int
    page_size: int
    total_pages: int
    has_more: bool


class JobWithResults(Job):
    """A job with one page of its results once it has ended (null for texts never run)."""

    results: list[TextResult | None] | None = None
    results_page: ResultsPage | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    next_cursor: str | None


# The request record's keys the job view echoes beside labels, template and multi_label; an old
# record lacks them and the view shows the defaults.
ECHOED_OPTIONS = ("label_hypotheses", "long_text", "chunk_stride", "chunk_aggregate", "threshold")


def echoed_options(record: dict[str, Any]) -> dict[str, Any]:
    """The options of a stored request record that `Job` shows."""
    return {key: record[key] for key in ECHOED_OPTIONS if record.get(key) is not None}
