"""Python futures with callbacks over a `DeploymentHandle` to the `zsc` app.

`submit` returns a `concurrent.futures.Future` (from the response's `ObjectRef.future()`) of the
`POST /v1/classify` body, so `add_done_callback`, `as_completed` and `wait` come from the standard
library; `submit_async` an asyncio future that settles on the caller's loop. What to know about
threads, blocking and cancelling: README, "Python futures with callbacks".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve_app.core.defaults import DEFAULT_TEMPLATE

ClassifyBody = dict[str, Any]
Callback = Callable[["concurrent.futures.Future[ClassifyBody]"], object]
AsyncCallback = Callable[["asyncio.Future[ClassifyBody]"], object]

# Tasks started on a running loop. The loop keeps only weak references to tasks, and a caller may
# hold just the concurrent future (`submit`) or only a callback (`submit_async`): without this
# set a task could be collected mid-flight and its future would never settle.
_placing: set[asyncio.Task[ClassifyBody]] = set()


def _classify(
    handle: DeploymentHandle,
    texts: list[str] | str,
    labels: list[str] | str,
    hypothesis_template: str,
    multi_label: bool,
    prefilter_top_k: int | None,
) -> DeploymentResponse:
    # Passed only when given: absent, the app's configured prefilter k applies.
    extra = {} if prefilter_top_k is None else {"prefilter_top_k": prefilter_top_k}
    response = handle.options(_by_reference=True).classify.remote(
        texts, labels, hypothesis_template=hypothesis_template, multi_label=multi_label, **extra
    )
    assert isinstance(response, DeploymentResponse)  # classify is not a generator
    return response


async def _via_object_ref(response: DeploymentResponse) -> ClassifyBody:
    ref = await response._to_object_ref()
    # `.future()` settles on a Ray thread; `wrap_future` hands the outcome to this loop with
    # `call_soon_threadsafe`.
    return await asyncio.wrap_future(ref.future())


def _start_task(
    loop: asyncio.AbstractEventLoop, response: DeploymentResponse
) -> asyncio.Task[ClassifyBody]:
    task = loop.create_task(_via_object_ref(response))
    _placing.add(task)
    task.add_done_callback(_placing.discard)
    # A done-callback rather than `except CancelledError` in the coroutine: a task cancelled
    # before its first step never enters the coroutine's body. `cancel()` does not block here:
    # the request is either still unassigned (then dropped) or already has its replica.
    task.add_done_callback(lambda done: response.cancel() if done.cancelled() else None)
    return task


def _settle_from(
    task: asyncio.Task[ClassifyBody], future: concurrent.futures.Future[ClassifyBody]
) -> None:
    if future.done():  # the caller cancelled it: nobody is waiting for the outcome
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(task.result())


def submit(
    handle: DeploymentHandle,
    texts: list[str] | str,
    labels: list[str] | str,
    *,
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    prefilter_top_k: int | None = None,
    callback: Callback | None = None,
) -> concurrent.futures.Future[ClassifyBody]:
    """Start one classification; return a `concurrent.futures.Future` of its `/v1/classify` body.

    `callback(future)` runs once the future is done, with a result or an exception: on a Ray
    thread, or on the loop's thread when called inside a running event loop.
    `prefilter_top_k`: with a prefilter configured, score only each text's k most similar
    labels (None: the configured k; 0: every label).
    """
    response = _classify(handle, texts, labels, hypothesis_template, multi_label, prefilter_top_k)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        future = response._to_object_ref_sync().future()
    else:
        future = concurrent.futures.Future()
        task = _start_task(loop, response)
        task.add_done_callback(lambda done: _settle_from(done, future))
    if callback is not None:
        future.add_done_callback(callback)
    return future


def submit_many(
    handle: DeploymentHandle,
    texts: Iterable[str],
    labels: list[str] | str,
    *,
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    prefilter_top_k: int | None = None,
    callback: Callback | None = None,
) -> list[concurrent.futures.Future[ClassifyBody]]:
    """One request (and one future, in the order of `texts`) per text; `callback` fires for each
    as its result arrives, in whatever order they finish."""
    return [
        submit(
            handle,
            [text],
            labels,
            hypothesis_template=hypothesis_template,
            multi_label=multi_label,
            prefilter_top_k=prefilter_top_k,
            callback=callback,
        )
        for text in texts
    ]


def submit_async(
    handle: DeploymentHandle,
    texts: list[str] | str,
    labels: list[str] | str,
    *,
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    prefilter_top_k: int | None = None,
    callback: AsyncCallback | None = None,
) -> asyncio.Future[ClassifyBody]:
    """Like `submit`, for code on a running event loop: returns at once with an asyncio future
    that settles on this loop, so `callback` and `await` run on the loop's thread.

    Raises RuntimeError when no event loop is running in this thread (use `submit` there).
    """
    loop = asyncio.get_running_loop()
    response = _classify(handle, texts, labels, hypothesis_template, multi_label, prefilter_top_k)
    future = _start_task(loop, response)
    if callback is not None:
        future.add_done_callback(callback)
    return future
