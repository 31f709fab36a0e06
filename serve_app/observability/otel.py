"""The OpenTelemetry side of `serve_app.observability.tracing`: imported only when tracing is on.

The SDK directly, not Ray Serve 2.60's own tracing: Serve's is configured per Serve instance
(`TracingConfig`, an exporter import path in `RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH`), which an
application's args cannot switch on, and it has no spans inside zsc's request path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serve_app.config import TracingConfig

_PROPAGATOR = TraceContextTextMapPropagator()


class OtelTracer:
    def __init__(
        self, config: TracingConfig, component: str, exporter: SpanExporter | None = None
    ) -> None:
        resource = Resource.create(
            {"service.name": config.service_name, "zsc.component": component}
        )
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
        )
        exporter = exporter or OTLPSpanExporter(endpoint=config.otlp_endpoint)
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=config.export_delay_ms)
        )
        self.tracer = self.provider.get_tracer("zsc")

    @contextmanager
    def span(
        self, name: str, traceparent: str | None, attributes: Mapping[str, Any] | None
    ) -> Iterator[None]:
        parent = (
            _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent is not None else None
        )
        kind = trace.SpanKind.SERVER if traceparent is not None else trace.SpanKind.INTERNAL
        with self.tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=dict(attributes or {})
        ):
            yield

    def record(
        self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None
    ) -> None:
        done = self.tracer.start_span(name, start_time=start_ns, attributes=dict(attributes or {}))
        done.end(end_time=end_ns)

    def set_attribute(self, name: str, value: Any) -> None:
        trace.get_current_span().set_attribute(name, value)

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=context.get_current())
        return carrier.get("traceparent")

    def shutdown(self) -> None:
        self.provider.shutdown()
