"""Every zsc_* metric, one group per component, built in the process that records it.

Ray exports them with a `ray_` prefix (counters also get `_total`). What Serve already exports
is not repeated: requests, latency, batch sizes (`ray_serve_actual_batch_size` counts a batch's
pairs, since each queued item is a pair), batch wait and batch execution time. What stays here is
what only zsc knows: the stages of a request inside a replica (tokenize, queue wait, one backend
forward per padded sub-batch), pairs, duplicates and cache hits, the limiter and the prefilter.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
COUNTS = [float(2**i) for i in range(13)] + [10_000.0]
MILLISECONDS = [0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]


def add(counter: Counter, amount: float, tags: dict[str, str] | None = None) -> None:
    """Increment unless `amount` is 0, which Ray's Counter refuses."""
    if amount:
        counter.inc(amount, tags=tags or {})


class ClassifierMetrics:
    def __init__(self, backend: str) -> None:
        self.backend_tags = {"backend": backend}
        self.tokenize_s = Histogram(
            "zsc_tokenize_seconds",
            description="Tokenizing one request's pairs (in the calling coroutine, before queueing).",
            boundaries=SECONDS,
        )
        self.queue_wait_s = Histogram(
            "zsc_queue_wait_seconds",
            description="From a request's pairs entering the batch queue to the start of the "
            "forward that runs them.",
            boundaries=SECONDS,
        )
        self.forward_s = Histogram(
            "zsc_forward_seconds",
            description="One backend forward of one padded sub-batch.",
            boundaries=SECONDS,
            tag_keys=("backend",),
        )
        self.request_pairs = Histogram(
            "zsc_request_pairs",
            description="Pairs one request asks the cross-encoder for.",
            boundaries=COUNTS,
        )
        self.pairs_scored = Counter(
            "zsc_pairs_scored",
            description="Pairs run through the model (after the cache and de-duplication).",
            tag_keys=("backend",),
        )
        self.batch_distinct = Histogram(
            "zsc_batch_distinct_pairs",
            description="Distinct pairs in one batch (duplicates are computed once).",
            boundaries=COUNTS,
        )
        self.float32_reruns = Counter(
            "zsc_float32_reruns",
            description="Half-precision batches whose logits were not all finite (fp16 overflow) "
            "and that ran again in float32.",
            tag_keys=("backend",),
        )
        self.cache_lookups = Counter(
            "zsc_cache_lookups",
            description="Result cache lookups by outcome (hit or miss).",
            tag_keys=("result",),
        )

    def forward(self, seconds: float) -> None:
        self.forward_s.observe(seconds, tags=self.backend_tags)

    def float32_rerun(self, rows: int) -> None:
        self.float32_reruns.inc(tags=self.backend_tags)

    def scored(self, pairs: int) -> None:
        add(self.pairs_scored, pairs, self.backend_tags)


class ErrorMetrics:
    def __init__(self) -> None:
        self.errors = Counter(
            "zsc_errors",
            description="Error answers by the error's type (invalid_request, rate_limited, "
            "unavailable, internal_error, ...) and where it was answered.",
            tag_keys=("type", "where"),
        )

    def count(self, type_: str, where: str) -> None:
        self.errors.inc(tags={"type": type_, "where": where})


class LimiterMetrics:
    def __init__(self) -> None:
        self.admitted = Counter(
            "zsc_ratelimit_admitted_cost",
            description="Cost (pairs or requests) admitted by the rate limiter, per API key name "
            '("anonymous" for callers without a key).',
            tag_keys=("client",),
        )
        self.refused = Counter(
            "zsc_ratelimit_refused_cost",
            description="Cost refused with a 429 by the rate limiter, per API key name "
            '("anonymous" for callers without a key).',
            tag_keys=("client",),
        )
        self.latency_ms = Histogram(
            "zsc_ratelimit_call_latency_ms",
            description="Round trip of one call to a limiter shard (one or many admissions).",
            boundaries=MILLISECONDS,
            tag_keys=("shard",),
        )
        self.call_admissions = Histogram(
            "zsc_ratelimit_admissions_per_call",
            description="Admissions decided by one call to a limiter shard (coalescing).",
            boundaries=COUNTS,
            tag_keys=("shard",),
        )
        self.coalesce_wait_ms = Histogram(
            "zsc_ratelimit_coalesce_wait_ms",
            description="How long the oldest admission of a call waited for the call to go out "
            "(behind the call in flight to that shard, or the coalescing window); under 0.5 ms "
            "when it went out at once.",
            boundaries=MILLISECONDS,
            tag_keys=("shard",),
        )
        self.fail_open = Counter(
            "zsc_ratelimit_fail_open",
            description="Requests or job chunks admitted unlimited because the limiter did not "
            "answer in time (fail_mode=open).",
        )


class PrefilterMetrics:
    def __init__(self) -> None:
        self.labels_considered = Histogram(
            "zsc_prefilter_labels_considered",
            description="Labels of one prefiltered request (ranked by the bi-encoder).",
            boundaries=COUNTS,
        )
        self.labels_kept = Histogram(
            "zsc_prefilter_labels_kept",
            description="Labels per text the prefilter passed on to the cross-encoder.",
            boundaries=COUNTS,
        )
        self.label_cache = Counter(
            "zsc_prefilter_label_cache",
            description="Label (hypothesis) embedding cache lookups by outcome (hit or miss).",
            tag_keys=("result",),
        )
        self.seconds = Histogram(
            "zsc_prefilter_seconds",
            description="Ranking one request's labels: embedding what is not cached, then top k.",
            boundaries=SECONDS,
        )


class JobRunnerMetrics:
    def __init__(self) -> None:
        self.paused = Gauge(
            "zsc_jobs_paused",
            description="1 while this job runner is paused because the job store's disk is full.",
        )
        self.paused.set(0)
