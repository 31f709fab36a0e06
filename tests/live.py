"""Helpers for tests against the live Serve app: polling, and finding replica actors by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import ray

T = TypeVar("T")

# Serve names every replica actor SERVE_REPLICA::<app>#<deployment>#<id> in namespace "serve";
# named actors are listed by the GCS itself, so this works without the dashboard's state API.
REPLICA_PREFIX = "SERVE_REPLICA::"
SERVE_NAMESPACE = "serve"


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def replica_names(app: str, deployment: str | None = None) -> set[str]:
    """Names of the live replica actors of an app (or of one of its deployments)."""
    prefix = f"{REPLICA_PREFIX}{app}#" + (f"{deployment}#" if deployment else "")
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == SERVE_NAMESPACE and actor["name"].startswith(prefix)
    }
