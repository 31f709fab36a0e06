"""Traces on a live app, exported over OTLP/HTTP to a collector in the test: one request's spans,
from the ingress to the Classifier's forward, in the caller's trace across both processes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from live import wait_for
from otlp_collector import ReceivedSpan, otlp_collector

pytestmark = pytest.mark.ray

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
EXPECTED = {
    "zsc.ingress": "ingress",
    "zsc.rate_limit": "ingress",
    "zsc.classifier": "classifier",
    "zsc.tokenize": "classifier",
    "zsc.queue_wait": "classifier",
    "zsc.forward": "classifier",
}


@pytest.fixture(scope="module")
def traced(deploy_app) -> Iterator[tuple[str, list[ReceivedSpan]]]:
    with otlp_collector() as (endpoint, spans):
        url = deploy_app(
            "traced",
            tracing={"otlp_endpoint": endpoint, "export_delay_ms": 100},
            rate_limit={"enabled": True},
        )
        yield url, spans


def test_one_trace_crosses_from_the_ingress_into_the_classifier(
    traced: tuple[str, list[ReceivedSpan]],
) -> None:
    url, spans = traced
    answer = httpx.post(
        f"{url}/v1/classify",
        json={"text": "The striker scored twice.", "labels": ["sports", "cooking"]},
        headers={"traceparent": TRACEPARENT},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text

    def ours() -> dict[str, ReceivedSpan] | None:
        found = {s.name: s for s in spans if s.trace_id == TRACE_ID}
        return found if EXPECTED.keys() <= found.keys() else None

    found = wait_for(ours, 60, "the request's spans at the collector")
    for name, component in EXPECTED.items():
        assert found[name].component == component, found[name]
    # The Classifier's span is a child of a span of the ingress's process: the context crossed.
    ingress_ids = {s.span_id for s in found.values() if s.component == "ingress"}
    assert found["zsc.classifier"].parent_span_id in ingress_ids
    assert found["zsc.tokenize"].parent_span_id == found["zsc.classifier"].span_id
    assert found["zsc.forward"].parent_span_id == found["zsc.classifier"].span_id
