"""HTTP routes of jobs: submit, read (with paged results), list and cancel.

Everything a caller can get wrong is checked here, at submission, so it is a 400/413/422 now and
never a 429 or a silent failure later: the body (`JobRequest.prepared`) and the callback URL
(`check_callback_url`, which resolves the host). The routes then call the JobRunner through its
handle, since that deployment alone owns the job store.

A job belongs to the API key that submitted it or, without auth, to nobody: every anonymous
caller shares the anonymous jobs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from serve_app.core.errors import ClientError
from serve_app.http.identity import client_key, owner_of
from serve_app.http.routes.services import ServicesDep
from serve_app.http.schemas import JobRequest
from serve_app.jobs.models import Job, JobList, JobWithResults
from serve_app.jobs.ssrf import check_callback_url

MAX_LIST_LIMIT = 100


def found(job: Job | None, job_id: str) -> Job:
    # Someone else's job is "not found" too: its existence is not the caller's business.
    if job is None:
        raise ClientError(f"no job {job_id!r}", status_code=404, type="not_found")
    return job


router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


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
    svc: ServicesDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
) -> Any:
    config = svc.config
    prepared = body.prepared(config)
    # Every label must fit the model's window now: a job runs later, and must not fail then.
    await svc.scorer.check_labels(prepared)
    if body.callback_url is not None:
        # Resolving the host is blocking DNS: keep it off the event loop.
        await run_in_threadpool(
            check_callback_url, body.callback_url, config.jobs.webhook.allow_hosts
        )
    job = await svc.jobs.submit.remote(
        prepared,
        owner=owner_of(request),
        rate_key=client_key(request),
        callback_url=body.callback_url,
        metadata=body.metadata,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
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
    svc: ServicesDep,
    page: int = Query(1, ge=1),
    page_size: int | None = Query(None, ge=1, description="at most jobs.results_page_size"),
) -> Any:
    largest = svc.config.jobs.results_page_size
    if page_size is not None and page_size > largest:
        raise ClientError(
            f"page_size: must be at most jobs.results_page_size={largest}, got {page_size}"
        )
    return found(await svc.jobs.get.remote(job_id, owner_of(request), page, page_size), job_id)


@router.get("", response_model=JobList, summary="Your jobs, newest first")
async def list_jobs(
    request: Request,
    svc: ServicesDep,
    limit: int = Query(20, ge=1, le=MAX_LIST_LIMIT),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> Any:
    return await svc.jobs.list.remote(owner_of(request), limit, cursor)


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    summary="Cancel a job; results of finished chunks stay",
)
async def cancel_job(job_id: str, request: Request, svc: ServicesDep) -> Any:
    return found(await svc.jobs.cancel.remote(job_id, owner_of(request)), job_id)
