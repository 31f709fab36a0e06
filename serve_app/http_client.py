"""Python HTTP client of the zsc service: `ZeroShotClient` (sync) and `AsyncZeroShotClient`.

Both speak the public HTTP contract (DESIGN.md §4). The request bodies, the error mapping and
the retry rule are plain functions shared by the two classes, so they differ only in transport
(`httpx.Client` or `httpx.AsyncClient`) and in how they sleep.

Retries: a 429 (rate limited) or 503 (overloaded, restarting) answer means the request was not
processed, so it is sent again after the server's `Retry-After` (plus a little jitter, so
clients refused together do not return together), at most `max_retries` times. Job submissions
carry an `Idempotency-Key` (generated unless given) so that a retried submission never creates
a second job.

    with ZeroShotClient("http://127.0.0.1:8000") as zsc:
        body = zsc.classify("The battery lasts two days.", ["tech", "sports"])
        body["results"][0]["labels"]  # sorted by score, like the transformers pipeline
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from serve_app.config import DEFAULT_TEMPLATE

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 503})


class ZscHTTPError(Exception):
    """An error answer (4xx/5xx) of the service, or one that could not be parsed as JSON."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(status, type, message)
        self.status = status
        self.type = type
        self.message = message
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        hint = f" (retry after {self.retry_after:g} s)" if self.retry_after is not None else ""
        return f"HTTP {self.status} {self.type}: {self.message}{hint}"


@dataclass(frozen=True)
class RetryPolicy:
    """How 429/503 answers are retried."""

    max_retries: int = 5
    # A server that asks for a longer wait than this is answered with the error at once:
    # sleeping minutes inside a library call surprises callers more than an exception does.
    max_wait_s: float = 60.0
    # Used when a 429/503 carries no Retry-After: first wait, doubled per attempt.
    backoff_s: float = 0.5
    jitter: float = 0.1

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before resending, or None when the answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = self.backoff_s * 2**attempt
        if wait > self.max_wait_s:
            return None
        return wait * (1 + random.uniform(0, self.jitter))


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: delta-seconds (what zsc sends) or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_body(
    texts: str | Sequence[str],
    labels: str | Sequence[str],
    hypothesis_template: str,
    multi_label: bool,
) -> dict[str, Any]:
    """The body of `POST /v1/classify` (and of a job): a str is one `text`, else `texts`."""
    body: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
    body["labels"] = labels if isinstance(labels, str) else list(labels)
    body["hypothesis_template"] = hypothesis_template
    body["multi_label"] = multi_label
    return body


def job_body(
    texts: str | Sequence[str],
    labels: str | Sequence[str],
    hypothesis_template: str,
    multi_label: bool,
    callback_url: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body = classify_body(texts, labels, hypothesis_template, multi_label)
    if callback_url is not None:
        body["callback_url"] = callback_url
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def parse_response(response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; anything else becomes a `ZscHTTPError`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and body is not None:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        type_, message = str(error.get("type", "http_error")), str(error.get("message", ""))
    else:
        type_ = "http_error" if not response.is_success else "invalid_response"
        message = response.text[:500] or response.reason_phrase
    raise ZscHTTPError(
        response.status_code,
        type_,
        message,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        body=body,
    )


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "zsc-client"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _idempotency_headers(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def _page_params(page: int, page_size: int | None) -> dict[str, int]:
    params = {"page": page}
    if page_size is not None:
        params["page_size"] = page_size
    return params


def _list_params(limit: int | None, cursor: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}


def _has_more(job: Mapping[str, Any]) -> bool:
    """Whether an ended job's `results_page` says more result pages follow this one."""
    page = job.get("results_page") or {}
    return bool(page.get("has_more"))


class _Poll:
    """Backoff for polling a job: starts fast for small jobs, settles at `max_interval_s`."""

    def __init__(self, interval_s: float, max_interval_s: float, timeout_s: float | None) -> None:
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def next_wait(self, job_id: str) -> float:
        wait = self.interval_s
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} did not finish in time")
            wait = min(wait, left)
        self.interval_s = min(self.interval_s * 1.5, self.max_interval_s)
        return wait


class ZeroShotClient:
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> ZeroShotClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            response = self._http.request(method, path, **kwargs)
            wait = self.retry.delay(response, attempt)
            if wait is None:
                return parse_response(response)
            time.sleep(wait)
            attempt += 1

    def classify(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
    ) -> dict[str, Any]:
        """`POST /v1/classify`; returns the body (`model`, `results`, `usage`, ...)."""
        body = classify_body(texts, labels, hypothesis_template, multi_label)
        return self._request("POST", "/v1/classify", json=body)

    def model_info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/model")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def submit_job(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """`POST /v1/jobs`; returns the job (`id`, `state`, ...)."""
        body = job_body(texts, labels, hypothesis_template, multi_label, callback_url, metadata)
        return self._request(
            "POST", "/v1/jobs", json=body, headers=_idempotency_headers(idempotency_key)
        )

    def get_job(
        self, job_id: str, page: int | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        """`GET /v1/jobs/{id}`: state and progress; once ended, one page of results."""
        params = {} if page is None else _page_params(page, page_size)
        return self._request("GET", f"/v1/jobs/{job_id}", params=params)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel")

    def list_jobs(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """`GET /v1/jobs`: `{"data": [jobs, newest first], "next_cursor"}`."""
        return self._request("GET", "/v1/jobs", params=_list_params(limit, cursor))

    def wait_job(
        self,
        job_id: str,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
        timeout_s: float | None = None,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        """Poll until the job has ended; return it with every page of results joined.

        Results are in the order of the submitted texts; after a cancel or a failure, a text
        that never ran is None."""
        poll = _Poll(poll_interval_s, max_poll_interval_s, timeout_s)
        # Asking for page 1 on every poll makes the first answer after the end carry it.
        job = self.get_job(job_id, 1, page_size)
        while job["state"] not in TERMINAL_STATES:
            time.sleep(poll.next_wait(job_id))
            job = self.get_job(job_id, 1, page_size)
        results = list(job.get("results") or [])
        page = job
        while _has_more(page):
            page = self.get_job(job_id, page["results_page"]["page"] + 1, page_size)
            results.extend(page.get("results") or [])
        return {**job, "results": results, "results_page": None}


class AsyncZeroShotClient:
    """Asynchronous client (`httpx.AsyncClient`). Use `async with`, or `await aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 32,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> AsyncZeroShotClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            response = await self._http.request(method, path, **kwargs)
            wait = self.retry.delay(response, attempt)
            if wait is None:
                return parse_response(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def classify(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
    ) -> dict[str, Any]:
        body = classify_body(texts, labels, hypothesis_template, multi_label)
        return await self._request("POST", "/v1/classify", json=body)

    async def model_info(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/model")

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/healthz")

    async def submit_job(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = job_body(texts, labels, hypothesis_template, multi_label, callback_url, metadata)
        return await self._request(
            "POST", "/v1/jobs", json=body, headers=_idempotency_headers(idempotency_key)
        )

    async def get_job(
        self, job_id: str, page: int | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        params = {} if page is None else _page_params(page, page_size)
        return await self._request("GET", f"/v1/jobs/{job_id}", params=params)

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/v1/jobs/{job_id}/cancel")

    async def list_jobs(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        return await self._request("GET", "/v1/jobs", params=_list_params(limit, cursor))

    async def wait_job(
        self,
        job_id: str,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
        timeout_s: float | None = None,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        poll = _Poll(poll_interval_s, max_poll_interval_s, timeout_s)
        job = await self.get_job(job_id, 1, page_size)
        while job["state"] not in TERMINAL_STATES:
            await asyncio.sleep(poll.next_wait(job_id))
            job = await self.get_job(job_id, 1, page_size)
        results = list(job.get("results") or [])
        page = job
        while _has_more(page):
            page = await self.get_job(job_id, page["results_page"]["page"] + 1, page_size)
            results.extend(page.get("results") or [])
        return {**job, "results": results, "results_page": None}


__all__ = [
    "AsyncZeroShotClient",
    "RetryPolicy",
    "ZeroShotClient",
    "ZscHTTPError",
    "classify_body",
    "parse_retry_after",
]
