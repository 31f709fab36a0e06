"""Traces on the in-process edge: off by default with OpenTelemetry never imported by zsc; on,
a request continues its caller's W3C trace with the ingress and rate-limit spans."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge import asgi_client, engine_app, local_limiter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.config import RateLimitConfig, TracingConfig
from serve_app.observability import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
BODY = {"text": "The striker scored twice.", "labels": ["sports", "cooking"]}


def test_tracing_is_off_and_never_imports_opentelemetry_by_default() -> None:
    code = (
        "import sys\n"
        "from serve_app.config import AppConfig\n"
        "from serve_app.http.app import create_app\n"
        "from serve_app.http.routes.services import Services\n"
        "from serve_app.observability import tracing\n"
        "import serve_app.deployments.classifier, serve_app.deployments.ingress\n"
        "config = AppConfig()\n"
        "tracing.setup(config.tracing, 'ingress')\n"
        "app = create_app(Services(config=config, scorer=None))\n"
        "assert not tracing.enabled()\n"
        "assert 'serve_app.observability.otel' not in sys.modules\n"
        "assert 'opentelemetry.sdk.trace' not in sys.modules or 'ray' in sys.modules\n"
        "assert not any(m.cls.__name__ == 'TraceRequests' for m in app.user_middleware)\n"
        "print('off')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "off", done.stderr[-2000:]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.setup(TracingConfig(export_delay_ms=10), "ingress", exporter=spans)
    try:
        yield spans
    finally:
        tracing.shutdown()


def test_a_request_continues_the_callers_trace(
    tiny_model_dir: Path, exporter: InMemorySpanExporter
) -> None:
    app, services = engine_app(tiny_model_dir)
    services.rate_limiter = local_limiter(RateLimitConfig(enabled=True))

    async def send() -> int:
        async with asgi_client(app, "10.0.0.1") as client:
            answer = await client.post(
                "/v1/classify", json=BODY, headers={"traceparent": TRACEPARENT}
            )
            return answer.status_code

    assert asyncio.run(send()) == 200
    tracing.shutdown()  # flushes
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"zsc.ingress", "zsc.rate_limit"} <= spans.keys(), spans.keys()
    ingress, limit = spans["zsc.ingress"], spans["zsc.rate_limit"]
    assert f"{ingress.context.trace_id:032x}" == TRACE_ID
    assert ingress.parent is not None and f"{ingress.parent.span_id:016x}" == CALLER_SPAN
    assert limit.context.trace_id == ingress.context.trace_id
    assert limit.parent is not None and limit.parent.span_id == ingress.context.span_id
    assert ingress.attributes is not None
    assert ingress.attributes["http.response.status_code"] == 200


def test_without_a_traceparent_each_request_starts_its_own_trace(
    tiny_model_dir: Path, exporter: InMemorySpanExporter
) -> None:
    app, _ = engine_app(tiny_model_dir)

    async def send() -> None:
        async with asgi_client(app, "10.0.0.1") as client:
            for _ in range(2):
                assert (await client.post("/v1/classify", json=BODY)).status_code == 200

    asyncio.run(send())
    tracing.shutdown()
    ingress = [s for s in exporter.get_finished_spans() if s.name == "zsc.ingress"]
    assert len(ingress) == 2
    assert ingress[0].context.trace_id != ingress[1].context.trace_id
