"""Python futures with callbacks, from a `DeploymentHandle` to the `zsc` app.

`handle.classify.remote(...)` returns a `DeploymentResponse`. Its `ObjectRef` has `.future()`,
a real `concurrent.futures.Future`, so callers get `add_done_callback`, `as_completed` and
`wait` for free. Two details (DESIGN.md §5):

- `_to_object_ref_sync()` needs a by-reference handle; with `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`
  handles default to by-value, so we ask for `_by_reference=True` explicitly.
- Callbacks run on a Ray thread, not your thread or event loop. Keep them short; to touch
  asyncio state, use `submit_async`, which hops back to the loop with `call_soon_threadsafe`.

Example::

    from ray import serve
    from serve_app.client import submit_many
    import concurrent.futures as cf

    handle = serve.get_app_handle("zsc")
    futures = submit_many(handle, texts, ["sports", "politics"],
                          callback=lambda fut: print(fut.result()["results"][0]["labels"][0]))
    cf.wait(futures)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.config import DEFAULT_TEMPLATE

Callback = Callable[[concurrent.futures.Future], Any]


def _by_reference(handle: DeploymentHandle) -> DeploymentHandle:
    return handle.options(_by_reference=True)


def submit(
    handle: DeploymentHandle,
    texts: list[str] | str,
    labels: list[str] | str,
    *,
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    callback: Callback | None = None,
) -> concurrent.futures.Future:
    """Start one classification; return a Future of the `/v1/classify` body.

    Must be called outside a running event loop (use `submit_async` inside one). Errors (e.g. a
    rejected request) arrive as the future's exception, and so in the callback.
    """
    response = _by_reference(handle).classify.remote(
        texts, labels, hypothesis_template=hypothesis_template, multi_label=multi_label
    )
    future = response._to_object_ref_sync().future()
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
    callback: Callback | None = None,
) -> list[concurrent.futures.Future]:
    """One request (and one future) per text; callbacks fire as each result arrives."""
    return [
        submit(
            handle,
            [text],
            labels,
            hypothesis_template=hypothesis_template,
            multi_label=multi_label,
            callback=callback,
        )
        for text in texts
    ]


async def submit_async(
    handle: DeploymentHandle,
    texts: list[str] | str,
    labels: list[str] | str,
    *,
    hypothesis_template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    callback: Callable[[asyncio.Future], Any] | None = None,
) -> asyncio.Future:
    """Like `submit`, inside a running loop: an asyncio Future whose callbacks run on the loop."""
    loop = asyncio.get_running_loop()
    response = _by_reference(handle).classify.remote(
        texts, labels, hypothesis_template=hypothesis_template, multi_label=multi_label
    )
    ref = await response._to_object_ref()
    result: asyncio.Future = loop.create_future()
    if callback is not None:
        result.add_done_callback(callback)

    def settle(done: concurrent.futures.Future) -> None:
        # Runs on a Ray thread: hand the outcome to the loop's thread.
        def apply() -> None:
            if result.cancelled():
                return
            if done.exception() is not None:
                result.set_exception(done.exception())
            else:
                result.set_result(done.result())

        loop.call_soon_threadsafe(apply)

    ref.future().add_done_callback(settle)
    return result
