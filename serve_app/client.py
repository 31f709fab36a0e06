"""Client-side entry points, in one import.

- `submit` / `submit_async` / `submit_many`: `concurrent.futures` (or asyncio) futures, with
  callbacks, from a `DeploymentHandle` to the `zsc` app (in-cluster Python callers).
- `ZeroShotClient` / `AsyncZeroShotClient`: the HTTP API from anywhere.
"""

from serve_app.futures import submit, submit_async, submit_many
from serve_app.http_client import AsyncZeroShotClient, ZeroShotClient, ZscHTTPError

__all__ = [
    "AsyncZeroShotClient",
    "ZeroShotClient",
    "ZscHTTPError",
    "submit",
    "submit_async",
    "submit_many",
]
