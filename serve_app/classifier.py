"""The Classifier deployment: thin Ray Serve wiring around one `NLIModel`.

Each call tokenizes its own pairs, then hands every pair to one `@serve.batch` queue shared by
all concurrent calls on the replica, so pairs from different requests share forwards. The batch
is bounded by tokens (`batch_size_fn`), not by count. The forward deliberately blocks the
replica's event loop: DESIGN.md §5 measured that an awaited forward lets Ray 2.60 close batches
of ~2 under load, while a blocking one lets the queue fill during each forward so the next batch
takes everything that arrived (mean batches of 12-16).

No work is done twice: texts and hypotheses are tokenized once each (hypotheses once per label
across requests, see `PairTokenizer`), identical pairs in a batch run once (`NLIModel.forward`),
and with `result_cache_entries` > 0 a pair answered before skips the queue and the forward (it
is still tokenized, which also says whether its text was truncated).
Tokenization runs in the calling coroutine before its pairs are queued, never inside the batch,
so the model's thread only ever runs forwards; it costs ~0.1 ms per text and ~10 us per pair.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Counter, Histogram

from serve_app.cache import ResultCache, cache_keys
from serve_app.config import BatchingConfig, LimitsConfig, ModelConfig
from serve_app.model import NLIModel, Pair
from serve_app.nli import classify_from_logits
from serve_app.schemas import PreparedRequest, prepare_request

log = logging.getLogger("ray.serve")

# One queued pair: the id of the call it belongs to (to measure how many calls share a batch)
# and the tokenized pair itself.
BatchItem = tuple[int, Pair]


def batch_tokens(items: list[BatchItem]) -> int:
    """`batch_size_fn`: a batch's size is its number of tokens. Must never raise (ray#66140)."""
    return sum(len(pair[0]) for _, pair in items)

_BATCHING_DEFAULTS = BatchingConfig()

RANDOM_MODEL_WARNING = (
    "This is a random test model: its scores are random and mean nothing. "
    "Serve a real NLI model for real answers."
)


def response_body(
    model: NLIModel, request: PreparedRequest, logits: np.ndarray, truncated: list[int]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model.name,
        "results": classify_from_logits(
            request.texts, request.labels, logits, model.indices, request.multi_label
        ),
        "usage": {"pairs": request.pairs},
        "truncated": truncated,
    }
    if model.random_weights:
        body["warning"] = RANDOM_MODEL_WARNING
    return body


@serve.deployment(name="Classifier", ray_actor_options={"num_cpus": 1})
class Classifier:
    def __init__(
        self,
        model_config: dict[str, Any],
        limits: dict[str, Any] | None = None,
        batching: dict[str, Any] | None = None,
        model_source: str | None = None,
    ):
        cfg = ModelConfig.model_validate(model_config)
        # Threads follow the replica's num_cpus (Ray's OMP_NUM_THREADS): see model.thread_plan.
        self.model = NLIModel(cfg, source=model_source)
        self.cache = ResultCache(cfg.result_cache_entries)
        self._cache_lookups = Counter(
            "zsc_cache_lookups",
            description="Result cache lookups by outcome (hit or miss).",
            tag_keys=("result",),
        )
        self.limits = LimitsConfig.model_validate(limits or {})
        self._batching = BatchingConfig()
        self.reconfigure(batching or {})
        self._pairs_metric = Counter("zsc_pairs_scored", description="Pairs scored by the model.")
        self._batch_pairs = Histogram(
            "zsc_batch_pairs",
            description="Pairs in one model batch (after merging requests).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        )
        self._batch_unique = Histogram(
            "zsc_batch_distinct_pairs",
            description="Distinct pairs in one batch (duplicates are computed once).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        )
        self._forward_s = Histogram(
            "zsc_forward_seconds",
            description="Model time of one batch.",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
        )
        # Recent batch sizes, for tests and `GET /v1/model` (Prometheus may not be scraped).
        # (pairs, calls, forward start, forward end) of each recent batch.
        self._recent_batches: list[tuple[int, int, float, float]] = []
        self._call_ids = itertools.count()
        log.info("Classifier ready: %s", self.model.describe())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live-tune batching from `user_config` without restarting the replica."""
        batching = BatchingConfig.model_validate(user_config or {})
        # A single pair can be as long as the window, and Ray rejects an item larger than the
        # batch bound, so the budget never drops below one full-window pair.
        budget = max(batching.max_batch_tokens, self.model.window)
        self._batching = batching.model_copy(update={"max_batch_tokens": budget})
        self._score_pair.set_max_batch_size(budget)
        self._score_pair.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def classify(
        self,
        texts: list[str] | str,
        labels: list[str] | str,
        hypothesis_template: str = "This example is {}.",
        multi_label: bool = False,
    ) -> dict[str, Any]:
        """Classify texts against labels; the answer body of `POST /v1/classify`."""
        request = prepare_request(texts, labels, hypothesis_template, multi_label, self.limits)
        return await self.classify_prepared(request)

    async def classify_prepared(self, request: PreparedRequest) -> dict[str, Any]:
        encoded = self.model.encode(request.texts, request.labels, request.hypothesis_template)
        call_id = next(self._call_ids)
        if not self.cache.enabled:
            rows = await asyncio.gather(*(self._score_pair((call_id, p)) for p in encoded.pairs))
            return response_body(self.model, request, np.stack(rows), encoded.truncated)
        keys = cache_keys(
            self.model.name, request.hypothesis_template, request.texts, request.labels
        )
        found = self.cache.get_many(keys)
        misses = [i for i, row in enumerate(found) if row is None]
        for outcome, count in (("hit", len(found) - len(misses)), ("miss", len(misses))):
            if count:  # Ray's Counter refuses an increment of 0
                self._cache_lookups.inc(count, tags={"result": outcome})
        computed = await asyncio.gather(
            *(self._score_pair((call_id, encoded.pairs[i])) for i in misses)
        )
        self.cache.put_many([keys[i] for i in misses], computed)
        for i, row in zip(misses, computed):
            found[i] = row
        return response_body(self.model, request, np.stack(found), encoded.truncated)

    async def classify_chunk(self, request: PreparedRequest) -> list[dict[str, Any]]:
        """Results only (for the job runner, which has already validated the whole job)."""
        return (await self.classify_prepared(request))["results"]

    # The decorator's values are the defaults only: reconfigure() sets the configured ones
    # before the first call.
    @serve.batch(
        max_batch_size=_BATCHING_DEFAULTS.max_batch_tokens,
        batch_wait_timeout_s=_BATCHING_DEFAULTS.batch_wait_timeout_s,
        batch_size_fn=batch_tokens,
    )
    async def _score_pair(self, items: list[BatchItem]) -> list[np.ndarray]:
        pairs = [pair for _, pair in items]
        start = time.perf_counter()
        # Blocking, see above. The batch is cut into sub-batches of the model's forward_tokens.
        logits = self.model.forward(pairs)
        end = time.perf_counter()
        self._forward_s.observe(end - start)
        self._pairs_metric.inc(len(pairs))
        self._batch_pairs.observe(len(pairs))
        self._batch_unique.observe(len(set(pairs)))
        calls = len({call_id for call_id, _ in items})
        self._recent_batches = (self._recent_batches + [(len(pairs), calls, start, end)])[-1000:]
        return list(logits)

    def batch_stats(self) -> dict[str, Any]:
        """Recent batches: pairs and calls per batch, forward time and the share of the time the
        model was busy (Serve also exports ray_serve_actual_batch_size and our zsc_batch_pairs
        histogram)."""
        batches = self._recent_batches
        span = batches[-1][3] - batches[0][2] if batches else 0.0
        busy = sum(end - start for _, _, start, end in batches)
        return {
            "batches": len(batches),
            "mean_pairs_per_batch": float(np.mean([b[0] for b in batches])) if batches else 0.0,
            "mean_calls_per_batch": float(np.mean([b[1] for b in batches])) if batches else 0.0,
            "max_pairs_per_batch": max((b[0] for b in batches), default=0),
            # Model time, and its share of the time from the first batch's start to the last
            # one's end: what is left is the gap between batches (queueing, tokenizing, replies).
            "forward_s": busy,
            "model_busy_share": busy / span if span > 0 else 0.0,
        }

    def reset_batch_stats(self) -> None:
        self._recent_batches = []

    def cache_stats(self) -> dict[str, Any]:
        """Result cache size and hit rate since start."""
        return self.cache.stats()

    def model_info(self) -> dict[str, Any]:
        return {
            **self.model.describe(),
            "batching": self._batching.model_dump(),
            "cache": self.cache.stats(),
            "limits": self.limits.model_dump(),
        }
