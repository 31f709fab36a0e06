"""The Prefilter deployment: the bi-encoder in replicas of its own, which rank a request's labels
against its texts so that the Scorer sends only each text's top k to the Classifier.

A call's labels come from the `BiEncoder`'s embedding cache; the ones it lacks are embedded at
once, in the calling coroutine. That blocks the replica's loop while they run, so a second call
with the same new taxonomy finds them cached rather than embedding them again. Texts go one by
one to a `@serve.batch` queue shared by all concurrent calls on the replica; its embedding blocks
the loop as the Classifier's forward does, so texts that arrive meanwhile form the next batch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application

from serve_app.config import PrefilterConfig
from serve_app.core.errors import StartupError
from serve_app.deployments.options import deployment_options
from serve_app.engine.bi_encoder import BiEncoder, top_k_indices
from serve_app.engine.source import ModelLoadError, pin_model, replica_source
from serve_app.observability.metrics import PrefilterMetrics, add

log = logging.getLogger("ray.serve")

_DEFAULTS = PrefilterConfig()
RECENT_BATCHES = 1000
# What `SentenceTransformer(dir)` reads besides config and tokenizer files (which
# resolve_model_source always fetches, modules.json and 1_Pooling/config.json among them).
BI_ENCODER_WEIGHTS = ["*.safetensors"]


@dataclass(frozen=True)
class TextItem:
    call_id: int
    text: str


@dataclass(frozen=True)
class PrefilterBatch:
    """One batch the Prefilter embedded: its texts, the calls it merged and its duration."""

    texts: int
    calls: int
    seconds: float


@serve.deployment(name="Prefilter")
class Prefilter:
    def __init__(self, settings: PrefilterConfig) -> None:
        assert settings.model is not None
        source = replica_source(
            settings.model, settings.revision, BI_ENCODER_WEIGHTS, required="modules.json"
        )
        self.encoder = BiEncoder(
            source, settings.model, settings.device, settings.dtype, settings.label_cache_entries
        )
        self.metrics = PrefilterMetrics()
        self._batching = _DEFAULTS
        self._recent: deque[PrefilterBatch] = deque(maxlen=RECENT_BATCHES)
        self._call_ids = itertools.count()
        self.texts_embedded = 0
        self.labels_embedded = 0
        self.encoder.warm_up()
        log.info("Prefilter ready: %s", self.encoder.describe())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Text batching from `user_config` (max_batch_texts, batch_wait_timeout_s), live: a
        config redeploy that changes only this deployment's user_config keeps the replicas."""
        self._batching = PrefilterConfig.model_validate(user_config or {})
        self._embed_text.set_max_batch_size(self._batching.max_batch_texts)
        self._embed_text.set_batch_wait_timeout_s(self._batching.batch_wait_timeout_s)

    async def top_k(
        self, texts: list[str], labels: list[str], hypothesis_template: str, k: int
    ) -> list[list[int]]:
        """For each text, the indices into `labels` (ascending) of the k labels whose
        hypotheses are most similar to it; every label when k >= len(labels)."""
        started = time.perf_counter()
        lookup = self.encoder.label_embeddings(labels, hypothesis_template)  # blocking
        self.labels_embedded += lookup.misses
        add(self.metrics.label_cache, lookup.hits, {"result": "hit"})
        add(self.metrics.label_cache, lookup.misses, {"result": "miss"})
        call_id = next(self._call_ids)
        vectors = await asyncio.gather(*(self._embed_text(TextItem(call_id, t)) for t in texts))
        kept = top_k_indices(np.stack(vectors), lookup.embeddings, k)
        self.metrics.labels_considered.observe(len(labels))
        self.metrics.labels_kept.observe(min(k, len(labels)))
        self.metrics.seconds.observe(time.perf_counter() - started)
        return kept

    # The decorator's values are the defaults only: reconfigure() sets the configured ones
    # before the first call.
    @serve.batch(
        max_batch_size=_DEFAULTS.max_batch_texts,
        batch_wait_timeout_s=_DEFAULTS.batch_wait_timeout_s,
    )
    async def _embed_text(self, items: list[TextItem]) -> list[np.ndarray]:
        started = time.perf_counter()
        vectors = self.encoder.embed([item.text for item in items])  # blocking, see above
        self.texts_embedded += len(items)
        calls = len({item.call_id for item in items})
        self._recent.append(PrefilterBatch(len(items), calls, time.perf_counter() - started))
        return list(vectors)

    async def ping(self) -> None:
        """The readiness probe of /healthz: answers as soon as the replica's loop is free."""

    def stats(self) -> dict[str, Any]:
        """What this replica embedded: recent text batches, totals and the label cache; with
        its id, so callers can tell replicas apart."""
        batches = list(self._recent)
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batches": len(batches),
            "max_texts_per_batch": max((b.texts for b in batches), default=0),
            "mean_texts_per_batch": float(np.mean([b.texts for b in batches])) if batches else 0.0,
            "max_calls_per_batch": max((b.calls for b in batches), default=0),
            "embed_s": sum(b.seconds for b in batches),
            "max_batch_texts": self._batching.max_batch_texts,
            "batch_wait_timeout_s": self._batching.batch_wait_timeout_s,
            "texts_embedded": self.texts_embedded,
            "labels_embedded": self.labels_embedded,
            "label_cache": self.encoder.cache_stats(),
        }

    def reset_stats(self) -> None:
        self._recent.clear()


def pin_prefilter(settings: PrefilterConfig) -> PrefilterConfig:
    """The prefilter settings with the bi-encoder checked here, in the driver (a missing or
    unreachable one fails at start with one line), and pinned: a hub id to the commit found, a
    local directory to its absolute path. Each replica resolves that on its own node."""
    assert settings.model is not None
    if importlib.util.find_spec("sentence_transformers") is None:
        raise StartupError(
            "zsc: prefilter.model is set but sentence-transformers is not installed: "
            "pip install 'zsc[prefilter]'"
        )
    try:
        ref, _ = pin_model(
            settings.model, settings.revision, BI_ENCODER_WEIGHTS, required="modules.json"
        )
    except ModelLoadError as exc:
        raise StartupError(f"zsc: prefilter.model: {exc}") from None
    return settings.model_copy(update={"model": ref.model, "revision": ref.revision})


def bind_prefilter(settings: PrefilterConfig) -> Application:
    """The Prefilter bound for `build_app`, from settings `pin_prefilter` pinned."""
    batching = settings.model_dump(include={"max_batch_texts", "batch_wait_timeout_s"})
    return Prefilter.options(
        **deployment_options(settings.deployment, settings.deployment.num_cpus),
        user_config=batching,
    ).bind(settings)
