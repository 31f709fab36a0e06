"""Helpers for tests against the live Serve app: polling, finding replica actors by name, and
steady HTTP load that records every request's outcome."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import ray

from serve_app.client.http import ZeroShotClient, ZscHTTPError

T = TypeVar("T")

# Serve names every replica actor SERVE_REPLICA::<app>#<deployment>#<id> in namespace "serve";
# named actors are listed by the GCS itself, so this works without the dashboard's state API.
REPLICA_PREFIX = "SERVE_REPLICA::"
PROXY_PREFIX = "SERVE_PROXY_ACTOR"
SERVE_NAMESPACE = "serve"


def bearer(key: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


def submit_job(url: str, key: str, texts: list[str]) -> str:
    """Submit a two-label job with an API key over HTTP; return its id (asserts the 202)."""
    submitted = httpx.post(
        f"{url}/v1/jobs",
        json={"texts": texts, "labels": ["a", "b"]},
        headers=bearer(key),
        timeout=60,
    )
    assert submitted.status_code == 202, submitted.text
    job_id: str = submitted.json()["id"]
    return job_id


def wait_for(
    check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.25
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _own_rss_mb(_replica: Any) -> float:
    """Runs inside a replica's process (via __ray_call__): its resident set size in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def _imported_modules(_replica: Any) -> list[str]:
    """Runs inside a replica's process (via __ray_call__): the top-level modules it imported."""
    return sorted({name.split(".")[0] for name in sys.modules})


def in_actor(name: str, namespace: str, fn: Callable[[Any], T]) -> T:
    """Run `fn(actor_instance)` inside a named actor's process (a replica, the proxy, ...)."""
    # Workers cannot import this tests-only module: send the function itself, not its name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor = ray.get_actor(name, namespace=namespace)
    return ray.get(actor.__ray_call__.remote(fn), timeout=60)


def actor_rss_mb(name: str, namespace: str) -> float:
    """RSS of a named actor's process (a replica, the proxy, the limiter); Linux only."""
    return in_actor(name, namespace, _own_rss_mb)


def actor_modules(name: str, namespace: str) -> list[str]:
    """The top-level modules a named actor's process has imported."""
    return in_actor(name, namespace, _imported_modules)


def app_running(app: str) -> bool:
    """Whether Serve reports the application RUNNING."""
    from ray import serve

    status = serve.status().applications.get(app)
    return status is not None and status.status == "RUNNING"


def serving_actors(app: str) -> dict[str, str]:
    """The app's replicas and Serve's HTTP proxies: short label -> actor name (namespace serve)."""
    actors = {name.removeprefix(f"{REPLICA_PREFIX}{app}#"): name for name in replica_names(app)}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == SERVE_NAMESPACE and actor["name"].startswith(PROXY_PREFIX):
            actors["proxy"] = actor["name"]
    return actors


def replica_names(app: str, deployment: str | None = None) -> set[str]:
    """Names of the live replica actors of an app (or of one of its deployments)."""
    prefix = f"{REPLICA_PREFIX}{app}#" + (f"{deployment}#" if deployment else "")
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == SERVE_NAMESPACE and actor["name"].startswith(prefix)
    }


@dataclass(frozen=True)
class Outcome:
    """One request of a load run: when it was sent and answered, and how."""

    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer at all (the error says why)
    retry_after: str | None = None
    error: str | None = None  # the JSON error's type, or the transport error's class

    @property
    def latency_s(self) -> float:
        return self.ended - self.started

    def says_retry(self) -> bool:
        return self.status == 503 and self.retry_after is not None


class SteadyLoad:
    """`clients` threads, each sending `body` to `url` one request after another until stopped;
    with `interval_s`, each paces itself to one request per interval (a fixed offered rate)."""

    def __init__(
        self,
        url: str,
        body: dict[str, Any],
        clients: int,
        headers: dict[str, str] | None = None,
        interval_s: float | None = None,
    ):
        self.url = url
        self.body = body
        self.headers = headers or {}
        self.interval_s = interval_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    @property
    def done(self) -> int:
        return len(self.outcomes)

    def ok_since(self, t: float) -> int:
        return sum(1 for o in list(self.outcomes) if o.started >= t and o.status == 200)

    def _client(self) -> None:
        next_at = time.monotonic()
        with self._connect() as client:
            while not self._stop.is_set():
                if self.interval_s is not None:
                    # Pacing the offered load, not waiting for an outcome.
                    next_at += self.interval_s
                    if self._stop.wait(max(0.0, next_at - time.monotonic())):
                        break
                outcome = self._send(client)
                with self._lock:
                    self.outcomes.append(outcome)

    def _connect(self) -> Any:
        return httpx.Client(timeout=120, headers=self.headers)

    def _send(self, client: httpx.Client) -> Outcome:
        started = time.monotonic()
        try:
            response = client.post(self.url, json=self.body)
        except httpx.HTTPError as exc:
            return Outcome(started, time.monotonic(), None, error=type(exc).__name__)
        return Outcome(
            started,
            time.monotonic(),
            response.status_code,
            response.headers.get("retry-after"),
            _error_type(response) if response.status_code != 200 else None,
        )


class ZscClientLoad(SteadyLoad):
    """Like SteadyLoad, but each request goes through `ZeroShotClient.classify` (with its retry
    rule): an outcome is 200 when the call returned its results, else the error it raised.
    `url` is the service's base URL; `body` holds `texts` and `labels`."""

    def _connect(self) -> ZeroShotClient:
        return ZeroShotClient(self.url, timeout=120)

    def _send(self, client: ZeroShotClient) -> Outcome:  # type: ignore[override]
        started = time.monotonic()
        try:
            body = client.classify(self.body["texts"], self.body["labels"])
        except ZscHTTPError as exc:
            return Outcome(started, time.monotonic(), exc.status, error=exc.type)
        except httpx.HTTPError as exc:
            return Outcome(started, time.monotonic(), None, error=type(exc).__name__)
        assert len(body["results"]) == len(self.body["texts"])
        return Outcome(started, time.monotonic(), 200)


def _error_type(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return f"non-JSON: {response.text[:60]!r}"
