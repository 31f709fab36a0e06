"""Request traces, off unless `tracing.otlp_endpoint` is set; free when off.

Call sites use `span(...)`, `record_span(...)` and `traceparent()` whether tracing is on or not;
off, they do nothing and OpenTelemetry is never imported (`serve_app.observability.otel` holds
every import of it, loaded by `setup` only when an endpoint is configured). Each process (an
ingress or Classifier replica) calls `setup` once. A trace crosses into the Classifier as a W3C
`traceparent` string passed with the request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from serve_app.config import TracingConfig

if TYPE_CHECKING:
    from serve_app.observability.otel import OtelTracer

_tracer: OtelTracer | None = None


def setup(config: TracingConfig, component: str, exporter: Any = None) -> None:
    """Start exporting this process's spans when an endpoint is set (or an exporter is given:
    tests pass the SDK's in-memory one); else leave tracing off."""
    global _tracer
    if config.otlp_endpoint is None and exporter is None:
        return
    if _tracer is not None:  # one provider per process, even with several replicas in it
        return
    from serve_app.observability.otel import OtelTracer

    _tracer = OtelTracer(config, component, exporter)


def enabled() -> bool:
    return _tracer is not None


@contextmanager
def span(
    name: str, traceparent: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """A span around the block; a child of `traceparent` when given, else of the current span."""
    if _tracer is None:
        yield
        return
    with _tracer.span(name, traceparent, attributes):
        yield


def record_span(
    name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
) -> None:
    """A span that already happened (a queue wait, a batched forward), under the current one."""
    if _tracer is not None:
        _tracer.record(name, start_ns, end_ns, attributes)


def set_attribute(name: str, value: Any) -> None:
    """An attribute on the current span (e.g. the answer's status)."""
    if _tracer is not None:
        _tracer.set_attribute(name, value)


def traceparent() -> str | None:
    """The current span as a W3C `traceparent`, to carry into another deployment."""
    return _tracer.traceparent() if _tracer is not None else None


def shutdown() -> None:
    """Flush and stop (tests; a replica's process exit flushes on its own)."""
    global _tracer
    if _tracer is not None:
        _tracer.shutdown()
        _tracer = None
