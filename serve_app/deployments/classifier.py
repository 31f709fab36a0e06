"""The Classifier deployment: one `Engine` and the queue that batches pairs across requests.

Each call tokenizes its own pairs (in the calling coroutine, so the model's thread only runs
forwards), then hands the pairs the cache does not know to one `@serve.batch` queue shared by all
concurrent calls on the replica. A batch is bounded by tokens (`batch_size_fn`), not by count.
The forward deliberately blocks the replica's event loop: an awaited forward let Ray 2.60 close
batches of ~2 under load, a blocking one lets the queue fill during each forward so the next
batch takes everything that arrived (docs/PERFORMANCE.md, "Batching").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from serve_app.config import BatchingConfig, ModelConfig, TracingConfig
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.engine.backends import backend_type
from serve_app.engine.engine import Engine
from serve_app.engine.protocol import Pair
from serve_app.engine.source import replica_source
from serve_app.observability import tracing
from serve_app.observability.metrics import ClassifierMetrics, add

log = logging.getLogger("ray.serve")

_BATCHING_DEFAULTS = BatchingConfig()
RECENT_BATCHES = 1000


@dataclass(frozen=True)
class BatchItem:
    """One queued pair, with the call it belongs to and when it was queued."""

    call_id: int
    queued_at: float
    pair: Pair


def batch_tokens(items: list[BatchItem]) -> int:
    """`batch_size_fn`: a batch's size is its number of tokens. Must never raise (ray#66140)."""
    return sum(len(item.pair[0]) for item in items)


@dataclass(frozen=True)
class ClassifierBatch:
    """One batch the Classifier ran: its pairs, the calls it merged, when it started and ended."""

    pairs: int
    calls: int
    started: float
    ended: float


@serve.deployment(name="Classifier")
class Classifier:
    def __init__(
        self,
        settings: ModelConfig,
        cpu_budget: float | None = None,
        tracing_config: TracingConfig | None = None,
    ) -> None:
        tracing.setup(tracing_config or TracingConfig(), "classifier")
        # With tracing on: per call, when its first batch started and its last one ended (wall
        # clock, ns), for the queue-wait and forward spans the call records afterwards.
        self._batch_times: dict[int, tuple[int, int]] = {}
        # On this replica's node: its own HF cache (the pinned commit), or the local directory
        # the operator declared present on every node (docs/OPERATIONS.md).
        source = replica_source(
            settings.model,
            settings.revision,
            backend_type(settings.backend).files(settings.onnx_file),
        )
        self.engine = Engine(settings, source, cpu_budget)
        self.metrics = ClassifierMetrics(settings.backend)
        self.engine.on_forward = self.metrics.forward
        self.engine.on_float32_rerun = self.metrics.float32_rerun
        self._batching = _BATCHING_DEFAULTS
        # Recent batches, for tests, benchmarks and `GET /v1/model` (Prometheus may not be
        # scraped); a bounded deque, appended to in place.
        self._recent: deque[ClassifierBatch] = deque(maxlen=RECENT_BATCHES)
        self._call_ids = itertools.count()
        # Before the replica reports ready: the first request costs what later ones cost.
        self.engine.warm_up()
        log.info("Classifier ready: %s", self.engine.describe())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching from `user_config`, live: a redeploy with a new one changes no replica."""
        batching = BatchingConfig.model_validate(user_config or {})
        # A single pair can be as long as the window, and Ray rejects an item larger than the
        # batch bound, so the budget never drops below one full-window pair.
        budget = max(batching.max_batch_tokens, self.engine.window)
        self._batching = batching.model_copy(update={"max_batch_tokens": budget})
        self._score_pair.set_max_batch_size(budget)
        self._score_pair.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def classify(
        self, request: PreparedRequest, traceparent: str | None = None
    ) -> Classification:
        """Score a validated request (the Ingress and the job runner call this); `traceparent`
        continues the caller's trace here when tracing is on."""
        with tracing.span("zsc.classifier", traceparent):
            started = time.perf_counter()
            with tracing.span("zsc.tokenize"):
                pending = self.engine.start(request)
            self.metrics.tokenize_s.observe(time.perf_counter() - started)
            self.metrics.request_pairs.observe(len(pending.rows))
            if pending.keys is not None:
                add(self.metrics.cache_lookups, pending.cache_hits, {"result": "hit"})
                add(
                    self.metrics.cache_lookups,
                    len(pending.rows) - pending.cache_hits,
                    {"result": "miss"},
                )
            call_id = next(self._call_ids)
            queued_at = time.perf_counter()
            queued_ns = time.time_ns()
            try:
                rows = await asyncio.gather(
                    *(
                        self._score_pair(BatchItem(call_id, queued_at, pair))
                        for pair in pending.todo
                    )
                )
            finally:
                batches = self._batch_times.pop(call_id, None)
            if batches is not None:
                attributes = {"zsc.pairs": len(pending.todo)}
                tracing.record_span("zsc.queue_wait", queued_ns, batches[0], attributes)
                tracing.record_span("zsc.forward", batches[0], batches[1], attributes)
            return self.engine.finish(pending, rows)

    async def ping(self) -> None:
        """The readiness probe of /healthz: answers as soon as the replica's loop is free."""

    async def check_labels(self, request: PreparedRequest) -> None:
        """Refuse labels that cannot be scored (a hypothesis longer than the window), so a job
        is refused at submission instead of failing later."""
        self.engine.check_labels(request)

    # The decorator's values are the defaults only: reconfigure() sets the configured ones
    # before the first call.
    @serve.batch(
        max_batch_size=_BATCHING_DEFAULTS.max_batch_tokens,
        batch_wait_timeout_s=_BATCHING_DEFAULTS.batch_wait_timeout_s,
        batch_size_fn=batch_tokens,
    )
    async def _score_pair(self, items: list[BatchItem]) -> list[np.ndarray]:
        started = time.perf_counter()
        waits: dict[int, float] = {}
        for item in items:
            waits[item.call_id] = max(waits.get(item.call_id, 0.0), started - item.queued_at)
        for wait in waits.values():
            self.metrics.queue_wait_s.observe(wait)
        pairs = [item.pair for item in items]
        started_ns = time.time_ns()
        logits = self.engine.forward(pairs)  # blocking, see the module docstring
        if tracing.enabled():
            ended_ns = time.time_ns()
            for call_id in waits:
                first = self._batch_times.get(call_id, (started_ns, ended_ns))[0]
                self._batch_times[call_id] = (first, ended_ns)
        distinct = len(set(pairs))
        self.metrics.scored(distinct)
        self.metrics.batch_distinct.observe(distinct)
        self._recent.append(ClassifierBatch(len(pairs), len(waits), started, time.perf_counter()))
        return list(logits)

    def batch_stats(self) -> dict[str, Any]:
        """Recent batches: pairs and calls per batch, forward time and the share of the time the
        model was busy; with this replica's id, so callers can tell replicas apart."""
        batches = list(self._recent)
        span = batches[-1].ended - batches[0].started if batches else 0.0
        busy = sum(b.ended - b.started for b in batches)
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batches": len(batches),
            "mean_pairs_per_batch": float(np.mean([b.pairs for b in batches])) if batches else 0.0,
            "mean_calls_per_batch": float(np.mean([b.calls for b in batches])) if batches else 0.0,
            "max_pairs_per_batch": max((b.pairs for b in batches), default=0),
            "max_batch_tokens": self._batching.max_batch_tokens,
            # Model time, and its share of the time from the first batch's start to the last
            # one's end: what is left is the gap between batches (queueing, tokenizing, replies).
            "forward_s": busy,
            "model_busy_share": busy / span if span > 0 else 0.0,
        }

    def reset_batch_stats(self) -> None:
        self._recent.clear()

    def cache_stats(self) -> dict[str, Any]:
        return self.engine.cache.stats()

    def model_info(self) -> dict[str, Any]:
        return {
            **self.engine.describe(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batching": self._batching.model_dump(),
            "cache": self.engine.cache.stats(),
        }
