"""HTTP routes of jobs: submit, read (with paged results), list and cancel.

Everything a caller can get wrong is checked here, at submission, so it is a 400/413/422 now and
never a 429 or a silent failure later: the body (`prepare_body` with `limits.max_job_texts`) and
the callback URL (`check_callback_url`, which resolves the host). The routes then call the
JobRunner through its handle, since that deployment alone owns the job store.

A job belongs to the API key that submitted it (`request.state.api_key_name`, set by auth) or,
without auth, to nobody: every anonymous caller shares the anonymous jobs.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle
from starlette.concurrency import run_in_threadpool

from serve_app.config import AppConfig
from serve_app.errors import ClientError
from serve_app.jobs.ssrf import check_callback_url
from serve_app.schemas import JobRequest, prepare_body

MAX_LIST_LIMIT = 100


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
    state: Literal["pending", "delivered", "failed"]
    created_at: float
    next_attempt_at: float | None
    finished_at: float | None
    attempts: list[DeliveryAttempt]


class Job(BaseModel):
    """A job; timestamps are Unix seconds, null until the job reaches that state."""

    id: str
    object: Literal["job"] = "job"
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancelled_at: float | None
    labels: list[str]
    hypothesis_template: str
    multi_label: bool
    progress: JobProgress
    callback_url: str | None
    metadata: dict[str, Any] | None
    error: JobError | None
    deliveries: list[WebhookDelivery]


class JobResult(BaseModel):
    """One text's answer, shaped like `POST /v1/classify`'s results."""

    sequence: str
    labels: list[str]
    scores: list[float]


class ResultsPage(BaseModel):
    page: int
    page_size: int
    total_pages: int
    has_more: bool


class JobWithResults(Job):
    results: list[JobResult | None] | None = None
    results_page: ResultsPage | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    next_cursor: str | None


def owner_of(request: Request) -> str | None:
    return getattr(request.state, "api_key_name", None)


def found(job: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    # Someone else's job is "not found" too: its existence is not the caller's business.
    if job is None:
        raise ClientError(f"no job {job_id!r}", status_code=404, type="not_found")
    return job


def build_jobs_router(config: AppConfig, runner: DeploymentHandle) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    page_size_max = config.jobs.results_page_size

    @router.post(
        "",
        status_code=202,
        response_model=Job,
        summary="Submit a large classification as a job",
        description="Answers 202 at once with the job and a Location header. With "
        "`Idempotency-Key`, a retried submission returns the same job. With `callback_url`, a "
        "Standard Webhooks event is POSTed there when the job ends.",
    )
    async def submit_job(
        body: JobRequest,
        request: Request,
        response: Response,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    ) -> Any:
        prepared = prepare_body(body, config.limits, max_texts=config.limits.max_job_texts)
        if body.callback_url is not None:
            # Resolving the host is blocking DNS: keep it off the event loop.
            await run_in_threadpool(
                check_callback_url, body.callback_url, config.jobs.webhook.allow_hosts
            )
        owner = owner_of(request)
        job = await runner.submit.remote(
            prepared,
            owner=owner,
            # The limiter keys clients by API key name, else by address, as the ingress does.
            rate_key=owner or (request.client.host if request.client else None),
            callback_url=body.callback_url,
            metadata=body.metadata,
            idempotency_key=idempotency_key,
        )
        response.headers["Location"] = str(request.url_for("get_job", job_id=job["id"]))
        return job

    @router.get(
        "/{job_id}",
        response_model=JobWithResults,
        summary="A job's state and progress; its results, page by page, once it has ended",
        description="Results are in the order of the submitted texts. After a cancel or a "
        "failure, a text whose chunk never ran has null in its place.",
    )
    async def get_job(
        job_id: str,
        request: Request,
        page: int = Query(1, ge=1),
        page_size: int | None = Query(None, ge=1, le=page_size_max),
    ) -> Any:
        return found(await runner.get.remote(job_id, owner_of(request), page, page_size), job_id)

    @router.get("", response_model=JobList, summary="Your jobs, newest first")
    async def list_jobs(
        request: Request,
        limit: int = Query(20, ge=1, le=MAX_LIST_LIMIT),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> Any:
        return await runner.list.remote(owner_of(request), limit, cursor)

    @router.post(
        "/{job_id}/cancel",
        response_model=Job,
        summary="Cancel a job; results of finished chunks stay",
    )
    async def cancel_job(job_id: str, request: Request) -> Any:
        return found(await runner.cancel.remote(job_id, owner_of(request)), job_id)

    return router
