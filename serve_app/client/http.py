"""Python HTTP client of the zsc service: `ZeroShotClient` (sync) and `AsyncZeroShotClient`.

Every operation is written once, as a generator of steps (`_Send` a request, `_Sleep`) that knows
nothing of sockets; the two classes only drive those steps, so the retry rule, the polling and
the paging cannot drift apart. Every zsc request is safe to send again, so what did not complete
is resent: 429/503 after `Retry-After`; 502/504, a dropped connection and Serve's plain-text 500
with backoff; never zsc's own JSON 500 (docs/OPERATIONS.md, "Failures").
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from serve_app.core.defaults import DEFAULT_TEMPLATE

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
RETRY_AFTER_STATUSES = frozenset({429, 503})
GATEWAY_STATUSES = frozenset({502, 504})
# Connection refused, reset, or closed before a whole answer: the request did not complete.
# Timeouts are not here: the caller's timeout is its budget, and a resend would double it.
RETRY_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError)

T = TypeVar("T")


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


def is_zsc_error(response: httpx.Response) -> bool:
    """Whether the body is zsc's `{"error": {...}}` envelope (so zsc itself answered)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def request_not_completed(outcome: httpx.Response | Exception) -> bool:
    """Whether an answer means "not done, send it again" without a Retry-After (see module doc)."""
    if isinstance(outcome, Exception):
        return isinstance(outcome, RETRY_TRANSPORT_ERRORS)
    if outcome.status_code in GATEWAY_STATUSES:
        return True
    return outcome.status_code == 500 and not is_zsc_error(outcome)


@dataclass(frozen=True)
class RetryPolicy:
    """Which answers are resent, how often, and after how long."""

    max_retries: int = 5
    # A server that asks for a longer wait than this is answered with the error at once:
    # sleeping minutes inside a library call surprises callers more than an exception does.
    max_wait_s: float = 60.0
    # Without a Retry-After: the first wait, doubled per attempt.
    backoff_s: float = 0.5
    jitter: float = 0.1

    def delay(self, outcome: httpx.Response | Exception, attempt: int) -> float | None:
        """Seconds to wait before resending, or None when the outcome is final."""
        if attempt >= self.max_retries:
            return None
        if isinstance(outcome, httpx.Response) and outcome.status_code in RETRY_AFTER_STATUSES:
            wait = parse_retry_after(outcome.headers.get("retry-after"))
        elif request_not_completed(outcome):
            wait = None
        else:
            return None
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


# A label: its name, or {"label": name, "hypothesis": sentence} (its own hypothesis).
Label = str | Mapping[str, Any]


def classify_request_body(
    texts: str | Sequence[str],
    labels: str | Sequence[Label],
    hypothesis_template: str,
    multi_label: bool,
    prefilter_top_k: int | None = None,
    *,
    long_text: str | None = None,
    chunk_stride: int | None = None,
    chunk_aggregate: str | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The body of `POST /v1/classify` (and of a job): a str is one `text`, else `texts`.
    `prefilter_top_k` and the long-text and threshold fields are sent only when given (absent,
    the server's defaults apply)."""
    body: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
    body["labels"] = (
        labels
        if isinstance(labels, str)
        else [x if isinstance(x, str) else dict(x) for x in labels]
    )
    body["hypothesis_template"] = hypothesis_template
    body["multi_label"] = multi_label
    optional = {
        "prefilter_top_k": prefilter_top_k,
        "long_text": long_text,
        "chunk_stride": chunk_stride,
        "chunk_aggregate": chunk_aggregate,
        "threshold": threshold,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def job_body(
    texts: str | Sequence[str],
    labels: str | Sequence[Label],
    hypothesis_template: str,
    multi_label: bool,
    callback_url: str | None,
    metadata: Mapping[str, Any] | None,
    prefilter_top_k: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    body = classify_request_body(
        texts, labels, hypothesis_template, multi_label, prefilter_top_k, **options
    )
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


# --- Operations, as steps -------------------------------------------------------------------


@dataclass(frozen=True)
class _Send:
    method: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)  # httpx.request keyword arguments


@dataclass(frozen=True)
class _Sleep:
    seconds: float


# What a driver sends back into the steps: the answer to a `_Send` (or the transport error
# that stood for it), or None after a `_Sleep`.
_Outcome = httpx.Response | httpx.TransportError | None
Steps = Generator[_Send | _Sleep, _Outcome, T]


def _call(retry: RetryPolicy, method: str, path: str, **options: Any) -> Steps[Any]:
    """One request with the retry rule; returns the parsed JSON body or raises."""
    attempt = 0
    while True:
        outcome = yield _Send(method, path, options)
        assert outcome is not None
        wait = retry.delay(outcome, attempt)
        if wait is None:
            if isinstance(outcome, Exception):
                raise outcome
            return parse_response(outcome)
        yield _Sleep(wait)
        attempt += 1


def _page_params(page: int | None, page_size: int | None) -> dict[str, int]:
    if page is None:
        return {}
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


def _wait_job(
    retry: RetryPolicy,
    job_id: str,
    poll_interval_s: float,
    max_poll_interval_s: float,
    timeout_s: float | None,
    page_size: int | None,
) -> Steps[dict[str, Any]]:
    poll = _Poll(poll_interval_s, max_poll_interval_s, timeout_s)
    path = f"/v1/jobs/{job_id}"
    # Asking for page 1 on every poll makes the first answer after the end carry it.
    job = yield from _call(retry, "GET", path, params=_page_params(1, page_size))
    while job["state"] not in TERMINAL_STATES:
        yield _Sleep(poll.next_wait(job_id))
        job = yield from _call(retry, "GET", path, params=_page_params(1, page_size))
    results = list(job.get("results") or [])
    page = job
    while _has_more(page):
        params = _page_params(page["results_page"]["page"] + 1, page_size)
        page = yield from _call(retry, "GET", path, params=params)
        results.extend(page.get("results") or [])
    return {**job, "results": results, "results_page": None}


class _Operations:
    """The service's operations as steps; the clients below run them over a transport."""

    retry: RetryPolicy

    def _post_json(self, path: str, body: dict[str, Any]) -> Steps[dict[str, Any]]:
        return _call(self.retry, "POST", path, json=body)

    def _submit_job(
        self, body: dict[str, Any], idempotency_key: str | None
    ) -> Steps[dict[str, Any]]:
        # Fixed here, once, so every resend of this submission carries the same key.
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return _call(self.retry, "POST", "/v1/jobs", json=body, headers=headers)

    def _get(self, path: str, **params: Any) -> Steps[dict[str, Any]]:
        return _call(self.retry, "GET", path, params=params)

    def _post(self, path: str) -> Steps[dict[str, Any]]:
        return _call(self.retry, "POST", path)


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "zsc-client"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class ZeroShotClient(_Operations):
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

    def _run(self, steps: Steps[T]) -> T:
        outcome: _Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, _Sleep):
                time.sleep(step.seconds)
                outcome = None
                continue
            try:
                outcome = self._http.request(step.method, step.path, **step.options)
            except httpx.TransportError as exc:
                outcome = exc

    def classify(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[Label],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        prefilter_top_k: int | None = None,
        *,
        long_text: str | None = None,
        chunk_stride: int | None = None,
        chunk_aggregate: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """`POST /v1/classify`; returns the body (`model`, `results`, `usage`, ...).

        `labels`: names, or {"label", "hypothesis"} dicts. `prefilter_top_k`: on a server with
        a prefilter, score only the k labels most similar to each text (None: the server's
        configured k; 0: every label). `long_text` ("truncate" | "chunk"), `chunk_stride`,
        `chunk_aggregate` ("max" | "mean") and `threshold` (0 to 1, adds `predicted`) are sent
        when given; None leaves them to the server's defaults."""
        body = classify_request_body(
            texts,
            labels,
            hypothesis_template,
            multi_label,
            prefilter_top_k,
            long_text=long_text,
            chunk_stride=chunk_stride,
            chunk_aggregate=chunk_aggregate,
            threshold=threshold,
        )
        return self._run(self._post_json("/v1/classify", body))

    def model_info(self) -> dict[str, Any]:
        return self._run(self._get("/v1/model"))

    def health(self) -> dict[str, Any]:
        return self._run(self._get("/healthz"))

    def submit_job(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[Label],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        prefilter_top_k: int | None = None,
        *,
        long_text: str | None = None,
        chunk_stride: int | None = None,
        chunk_aggregate: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """`POST /v1/jobs`; returns the job (`id`, `state`, ...). `prefilter_top_k` as in
        `classify`."""
        body = job_body(
            texts,
            labels,
            hypothesis_template,
            multi_label,
            callback_url,
            metadata,
            prefilter_top_k,
            long_text=long_text,
            chunk_stride=chunk_stride,
            chunk_aggregate=chunk_aggregate,
            threshold=threshold,
        )
        return self._run(self._submit_job(body, idempotency_key))

    def get_job(
        self, job_id: str, page: int | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        """`GET /v1/jobs/{id}`: state and progress; once ended, one page of results."""
        return self._run(self._get(f"/v1/jobs/{job_id}", **_page_params(page, page_size)))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._run(self._post(f"/v1/jobs/{job_id}/cancel"))

    def list_jobs(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """`GET /v1/jobs`: `{"data": [jobs, newest first], "next_cursor"}`."""
        return self._run(self._get("/v1/jobs", **_list_params(limit, cursor)))

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
        return self._run(
            _wait_job(
                self.retry, job_id, poll_interval_s, max_poll_interval_s, timeout_s, page_size
            )
        )


class AsyncZeroShotClient(_Operations):
    """Asynchronous client (`httpx.AsyncClient`). Use `async with`, or `await aclose()`.

    Same operations, arguments and answers as `ZeroShotClient`."""

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

    async def _run(self, steps: Steps[T]) -> T:
        outcome: _Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, _Sleep):
                await asyncio.sleep(step.seconds)
                outcome = None
                continue
            try:
                outcome = await self._http.request(step.method, step.path, **step.options)
            except httpx.TransportError as exc:
                outcome = exc

    async def classify(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[Label],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        prefilter_top_k: int | None = None,
        *,
        long_text: str | None = None,
        chunk_stride: int | None = None,
        chunk_aggregate: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        body = classify_request_body(
            texts,
            labels,
            hypothesis_template,
            multi_label,
            prefilter_top_k,
            long_text=long_text,
            chunk_stride=chunk_stride,
            chunk_aggregate=chunk_aggregate,
            threshold=threshold,
        )
        return await self._run(self._post_json("/v1/classify", body))

    async def model_info(self) -> dict[str, Any]:
        return await self._run(self._get("/v1/model"))

    async def health(self) -> dict[str, Any]:
        return await self._run(self._get("/healthz"))

    async def submit_job(
        self,
        texts: str | Sequence[str],
        labels: str | Sequence[Label],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        prefilter_top_k: int | None = None,
        *,
        long_text: str | None = None,
        chunk_stride: int | None = None,
        chunk_aggregate: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        body = job_body(
            texts,
            labels,
            hypothesis_template,
            multi_label,
            callback_url,
            metadata,
            prefilter_top_k,
            long_text=long_text,
            chunk_stride=chunk_stride,
            chunk_aggregate=chunk_aggregate,
            threshold=threshold,
        )
        return await self._run(self._submit_job(body, idempotency_key))

    async def get_job(
        self, job_id: str, page: int | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        return await self._run(self._get(f"/v1/jobs/{job_id}", **_page_params(page, page_size)))

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._run(self._post(f"/v1/jobs/{job_id}/cancel"))

    async def list_jobs(
        self, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        return await self._run(self._get("/v1/jobs", **_list_params(limit, cursor)))

    async def wait_job(
        self,
        job_id: str,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
        timeout_s: float | None = None,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        return await self._run(
            _wait_job(
                self.retry, job_id, poll_interval_s, max_poll_interval_s, timeout_s, page_size
            )
        )


__all__ = [
    "AsyncZeroShotClient",
    "RetryPolicy",
    "ZeroShotClient",
    "ZscHTTPError",
    "classify_request_body",
    "parse_retry_after",
]
