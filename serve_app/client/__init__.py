"""Calling zsc from Python, in one import.

- `ZeroShotClient` / `AsyncZeroShotClient`: the HTTP API from anywhere. `pip install zsc` is
  enough: no torch, no Ray, no transformers.
- `submit` / `submit_many` / `submit_async`: `concurrent.futures` (or asyncio) futures, with
  callbacks, from a `DeploymentHandle` to the `zsc` app, for Python code inside the cluster.
  They need Ray (`pip install "zsc[serve]"`), so they are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve_app.client.http import AsyncZeroShotClient, RetryPolicy, ZeroShotClient, ZscHTTPError

if TYPE_CHECKING:
    from serve_app.client.futures import submit, submit_async, submit_many

HANDLE_HELPERS = ("submit", "submit_many", "submit_async")


def __getattr__(name: str) -> Any:
    if name not in HANDLE_HELPERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from serve_app.client import futures
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise ImportError(
            f"serve_app.client.{name} needs Ray: the handle helpers call a DeploymentHandle "
            'inside a Ray cluster. Install the server extra: pip install "zsc[serve]" '
            "(ZeroShotClient and AsyncZeroShotClient need none of it)."
        ) from None
    return getattr(futures, name)


__all__ = [
    "AsyncZeroShotClient",
    "RetryPolicy",
    "ZeroShotClient",
    "ZscHTTPError",
    "submit",
    "submit_async",
    "submit_many",
]
