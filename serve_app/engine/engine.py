"""The engine: one loaded NLI cross-encoder behind a backend, ready for batched pending.

A request's path through it: `start` tokenizes its pairs (each text and hypothesis once) and
answers what it can from the result cache; the pairs left go through `forward` (identical pairs
once, length-sorted sub-batches, several at once on CPU), possibly batched with other requests'
pairs by the caller; `finish` caches the new rows and turns logits into typed results.
No Ray here: the Classifier deployment wraps one `Engine`, and tests and benchmarks drive it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.config import ModelConfig
from serve_app.core.cache import CacheKey, ResultCache, cache_keys
from serve_app.core.nli import nli_label_indices, score_texts, score_windows, with_predicted
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification, PrefilterUsage
from serve_app.engine.backends import backend_type
from serve_app.engine.protocol import Backend, LoadRequest, Pair
from serve_app.engine.scheduling import balanced, length_buckets, pad, pair_tokens
from serve_app.engine.source import ModelLoadError, read_model_files
from serve_app.engine.threads import replica_cpus, thread_plan
from serve_app.engine.tokenizer import EncodedRequest, PairTokenizer
from serve_app.engine.windows import check_stride, split

log = logging.getLogger(__name__)

# Measured here on batches of ~30 mixed-length pairs (as the service forms them): 512-token
# sub-batches ran 13% faster than 1024 and 60% faster than 4096 on fp32 (int8 alike): on CPU a
# few pairs already fill the matrix units, and smaller sub-batches span fewer lengths, so pad
# less. A GPU wants the whole batch in one forward.
CPU_FORWARD_TOKENS = 512
GPU_FORWARD_TOKENS = 16384
# Shapes run once at load, so the first request pays no kernel set-up (lengths x rows).
WARM_UP_SHAPES = ((16, 1), (64, 4), (128, 2))


@dataclass
class PendingScores:
    """One request in flight: its pairs, and the logits rows known so far (None: to compute)."""

    request: PreparedRequest
    encoded: EncodedRequest
    rows: list[np.ndarray | None]
    keys: list[CacheKey] | None
    windows: list[int] | None = None  # with long_text=chunk: windows per text

    @property
    def todo(self) -> list[Pair]:
        return [pair for pair, row in zip(self.encoded.pairs, self.rows) if row is None]

    @property
    def cache_hits(self) -> int:
        return sum(row is not None for row in self.rows)


class Engine:
    def __init__(self, settings: ModelConfig, source: str, cpu_budget: float | None = None) -> None:
        self.settings = settings
        self.name = settings.model
        self.source = source
        files = read_model_files(source)
        self.files = files
        self.id2label = files.id2label
        self.indices = nli_label_indices(files.id2label, settings.label_indices_map())
        kind = backend_type(settings.backend)
        self.device = kind.pick_device(settings.device)
        self.cpus = replica_cpus(cpu_budget)
        self.threads, self.workers = thread_plan(
            settings.torch_threads, settings.forward_workers, self.device == "cpu", self.cpus
        )
        self.backend: Backend = kind.load(
            LoadRequest(
                files=files,
                device=self.device,
                dtype=settings.dtype,
                threads=self.threads,
                revision=settings.revision,
                onnx_file=settings.onnx_file,
            )
        )
        self.tokenizer = PairTokenizer.from_pretrained(
            source, settings.revision, settings.max_length, files.max_positions
        )
        self.window = self.tokenizer.window
        self.forward_tokens = settings.forward_tokens or (
            CPU_FORWARD_TOKENS if self.device == "cpu" else GPU_FORWARD_TOKENS
        )
        self.cache = ResultCache(settings.result_cache_entries)
        # Called with the seconds of each backend forward (one padded sub-batch), for metrics.
        self.on_forward: Callable[[float], None] | None = None
        # Called with the rows of each half-precision batch rerun in float32 (non-finite logits).
        self.on_float32_rerun: Callable[[int], None] | None = None
        self.float32_reruns = 0  # batches rerun so far
        self.backend.on_float32_rerun = self._float32_rerun
        # The calling thread runs sub-batches too, so workers - 1 more threads.
        self._pool = (
            ThreadPoolExecutor(self.workers - 1, thread_name_prefix="zsc-forward")
            if self.workers > 1
            else None
        )

    # -- a request ----------------------------------------------------------------------------

    def start(self, request: PreparedRequest) -> PendingScores:
        """Tokenize the request's pairs and take what the result cache already knows.

        With long_text=chunk each text becomes its windows (serve_app/engine/windows.py), each
        scored like a text of its own; `finish` combines them."""
        label_sets = request.label_sets()
        hyp_sets = request.hypothesis_sets()
        counts: list[int] | None = None
        texts: Sequence[str] = request.texts
        if request.chunked:
            windows = split(
                self.tokenizer, request.texts, hyp_sets, request.chunk_stride, request.max_chunks
            )
            counts = windows.counts()
            texts = [w for ws in windows.texts for w in ws]
            hyp_sets = [h for h, n in zip(hyp_sets, counts) for _ in range(n)]
            label_sets = [labels for labels, n in zip(label_sets, counts) for _ in range(n)]
        encoded = self.tokenizer.encode(texts, hyp_sets)
        if counts is not None:
            # Every token of a chunked text is scored in some window: none is cut.
            encoded = EncodedRequest(encoded.pairs, truncated=[])
        if not self.cache.enabled:
            return PendingScores(request, encoded, [None] * len(encoded.pairs), None, counts)
        # A window is keyed by its own text.
        keys = [
            key
            for text, hyps, labels in zip(texts, hyp_sets, label_sets)
            for key in cache_keys(self.name, text, hyps, labels)
        ]
        return PendingScores(request, encoded, self.cache.get_many(keys), keys, counts)

    def check_labels(self, request: PreparedRequest) -> None:
        """Raise the ClientError scoring would raise for the request's labels and template."""
        hyps = request.hypothesis_list()
        self.tokenizer.check_fit(hyps)
        if request.chunked:
            check_stride(self.tokenizer, hyps, request.chunk_stride)

    def finish(self, pending: PendingScores, computed: Sequence[np.ndarray]) -> Classification:
        """Fill in the computed rows (in `todo` order), cache them, and score each text."""
        known = list(pending.rows)
        missing = [i for i, row in enumerate(known) if row is None]
        for i, row in zip(missing, computed, strict=True):
            known[i] = row
        if pending.keys is not None:
            self.cache.put_many([pending.keys[i] for i in missing], computed)
        rows = [row for row in known if row is not None]  # all of them, now
        request = pending.request
        logits = np.stack(rows) if rows else np.zeros((0, len(self.id2label)), np.float32)
        usage = None
        if request.top_k is not None:
            usage = PrefilterUsage(len(request.labels), request.scored_labels)
        if pending.windows is None:
            results = score_texts(
                request.texts, request.label_sets(), logits, self.indices, request.multi_label
            )
        else:
            results = score_windows(
                request.texts,
                request.label_sets(),
                pending.windows,
                logits,
                self.indices,
                request.multi_label,
                request.chunk_aggregate,
            )
        if request.threshold is not None:
            results = with_predicted(results, request.threshold, request.multi_label)
        return Classification(
            model=self.name,
            results=results,
            pairs=len(rows),
            truncated=pending.encoded.truncated,
            random_weights=self.files.random_weights,
            prefilter=usage,
        )

    def classify(self, request: PreparedRequest) -> Classification:
        """A whole request, here and now (tests, benchmarks; the service batches `forward`)."""
        pending = self.start(request)
        return self.finish(pending, list(self.forward(pending.todo)))

    # -- forward ------------------------------------------------------------------------------

    def forward(self, pairs: Sequence[Pair], max_batch_tokens: int | None = None) -> np.ndarray:
        """Logits (len(pairs), classes) in input order.

        Identical pairs are computed once; the rest run in length-sorted sub-batches whose padded
        size (longest x count) stays within max_batch_tokens (default: forward_tokens), so short
        pairs never pay for long. With several workers the sorted pairs are re-cut into runs of
        equal padded cost, a multiple of the workers, run that many at once, costliest first.
        A backend whose scores would depend on what shares a forward (dynamic int8) gets at
        most `max_rows_per_forward` pairs in each.
        """
        if not pairs:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        unique: dict[Pair, int] = {}
        for pair in pairs:
            unique.setdefault(pair, len(unique))
        distinct = list(unique)
        order = sorted(range(len(distinct)), key=lambda i: pair_tokens(distinct[i]))
        out = np.empty((len(distinct), len(self.id2label)), dtype=np.float32)
        budget = self.forward_tokens if max_batch_tokens is None else max_batch_tokens
        chunks = length_buckets(order, distinct, budget)
        rows = self.backend.max_rows_per_forward
        if rows is not None:
            # The backend's scores would depend on what shares a forward (protocol.py).
            chunks = [chunk[i : i + rows] for chunk in chunks for i in range(0, len(chunk), rows)]
        elif self._pool is not None and len(distinct) > 1:
            chunks = balanced(order, distinct, len(chunks), self.workers)
        self._run(chunks, distinct, out)
        return out[[unique[p] for p in pairs]]

    def _run(self, chunks: list[list[int]], pairs: list[Pair], out: np.ndarray) -> None:
        """Run sub-batches on the workers, the costliest first (each takes the next one when it
        is free), so they finish together."""
        todo = deque(sorted(chunks, key=lambda c: -len(c) * pair_tokens(pairs[c[-1]])))

        def work() -> None:
            while True:
                try:
                    chunk = todo.popleft()
                except IndexError:
                    return
                batch = pad(
                    [pairs[i] for i in chunk],
                    self.tokenizer.pad_id,
                    self.tokenizer.uses_token_types,
                )
                started = time.perf_counter()
                out[chunk] = self.backend.forward(batch)
                if self.on_forward is not None:
                    self.on_forward(time.perf_counter() - started)

        helpers = []
        if self._pool is not None:
            helpers = [self._pool.submit(work) for _ in range(min(self.workers, len(chunks)) - 1)]
        work()
        for helper in helpers:
            helper.result()

    def _float32_rerun(self, rows: int) -> None:
        self.float32_reruns += 1
        if self.on_float32_rerun is not None:
            self.on_float32_rerun(rows)

    def warm_up(self) -> None:
        """Run a few typical shapes once, so the first request costs what later ones cost.

        The longest is a full window, the longest pair a request can bring, so a model whose
        files cannot serve it (a position table shorter than its tokenizer says) stops here, at
        start, with one line (ModelLoadError), not on a caller's long text."""
        shapes = [*WARM_UP_SHAPES, (self.window, 1)]
        most = self.backend.max_rows_per_forward
        for length, rows in shapes:
            n = min(length, self.window)
            rows = min(rows, most) if most is not None else rows
            pairs: list[Pair] = [((self.tokenizer.pad_id + 1,) * n, None)] * rows
            batch = pad(pairs, self.tokenizer.pad_id, self.tokenizer.uses_token_types)
            for _ in range(self.workers if length != self.window else 1):
                try:
                    self.backend.forward(batch)
                except Exception as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise ModelLoadError(
                        f"{self.source} cannot run a batch of {rows} x {n} tokens within its "
                        f"window of {self.window} ({type(exc).__name__}: {first}); set max_length "
                        "to what the model takes"
                    ) from None

    def describe(self) -> dict[str, Any]:
        runtime = self.backend.describe()
        return {
            "model": self.name,
            # The commit every replica loads (a hub model), None for a local directory.
            "revision": self.settings.revision,
            "source": self.source,
            **runtime,
            "max_length": self.window,
            "id2label": self.id2label,
            "entailment_index": self.indices.entailment,
            "contradiction_index": self.indices.contradiction,
            "random_weights": self.files.random_weights,
            "float32_reruns": self.float32_reruns,
            # The layout in use: threads x workers on the CPUs this replica may use.
            "cpus": self.cpus,
            "torch_threads": self.threads,
            "forward_workers": self.workers,
            "forward_tokens": self.forward_tokens,
        }
