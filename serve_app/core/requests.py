"""One classification request, validated once and passed on typed.

Every serving path (HTTP, the Python handle, jobs) turns its input into a `PreparedRequest`
here, so a mistake is the same 4xx whichever way it came. `prepare_request` bounds a request
answered now; `prepare_job` bounds a job, whose texts are chunked and may be many more.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.config import LimitsConfig, RequestDefaults
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.core.errors import ClientError, LimitExceeded
from serve_app.core.nli import parse_labels

LONG_TEXT_MODES = ("truncate", "chunk")
AGGREGATES = ("max", "mean")
# A label object: {"label": name, "hypothesis": sentence}; what a caller may send as a label.
LabelInput = str | Mapping[str, Any]


@dataclass(frozen=True)
class PreparedRequest:
    """Texts x labels to score. `top_k`: the prefilter keeps that many labels per text (None:
    every label is scored). `candidates`: the label indices the prefilter kept for each text,
    set once it has run (None: all labels). `label_hypotheses`: per label, its own hypothesis
    (None: the template's), or None when no label has one.

    `long_text="chunk"` scores each text in windows of the model's room with `chunk_stride`
    tokens of overlap, at most `max_chunks` per text, combined by `chunk_aggregate`;
    `threshold` adds each result's `predicted` labels."""

    texts: list[str]
    labels: list[str]
    hypothesis_template: str
    multi_label: bool
    top_k: int | None = None
    candidates: list[list[int]] | None = None
    label_hypotheses: list[str | None] | None = None
    long_text: str = "truncate"
    chunk_stride: int = 0
    chunk_aggregate: str = "max"
    threshold: float | None = None
    max_chunks: int = 1

    @property
    def chunked(self) -> bool:
        return self.long_text == "chunk"

    @property
    def needs_prefilter(self) -> bool:
        return self.top_k is not None and self.candidates is None and len(self.labels) > self.top_k

    @property
    def scored_labels(self) -> int:
        """Labels the cross-encoder scores per text."""
        if self.top_k is None:
            return len(self.labels)
        return min(self.top_k, len(self.labels))

    @property
    def windows_bound(self) -> int:
        """The most windows one text may use: 1, or `max_chunks` when chunking."""
        return self.max_chunks if self.chunked else 1

    @property
    def pairs(self) -> int:
        """(text, label) pairs the cross-encoder may run: what a request costs (max_pairs, the
        rate limit). A chunked text's windows are only known once tokenized, in the Classifier,
        so each text is charged the bound, `max_chunks` windows; `usage.pairs` in the answer
        says how many ran."""
        return len(self.texts) * self.scored_labels * self.windows_bound

    def hypothesis_list(self) -> list[str]:
        """Each label's hypothesis, in label order."""
        own = self.label_hypotheses or [None] * len(self.labels)
        return [
            self.hypothesis_template.format(label) if hyp is None else hyp
            for label, hyp in zip(self.labels, own)
        ]

    def label_indices(self) -> list[list[int]]:
        """Each text's label indices, in the request's order."""
        if self.candidates is None:
            return [list(range(len(self.labels)))] * len(self.texts)
        return [list(kept) for kept in self.candidates]

    def label_sets(self) -> list[list[str]]:
        """Each text's labels, in the request's order."""
        if self.candidates is None:
            return [self.labels] * len(self.texts)
        return [[self.labels[i] for i in kept] for kept in self.candidates]

    def hypothesis_sets(self) -> list[list[str]]:
        """Each text's hypotheses, in the order of its labels."""
        hyps = self.hypothesis_list()
        return [[hyps[i] for i in kept] for kept in self.label_indices()]

    def with_candidates(self, candidates: list[list[int]]) -> PreparedRequest:
        return dataclasses.replace(self, candidates=candidates)


def validate_template(template: str) -> None:
    if template.count("{}") != 1:
        raise ClientError(
            "hypothesis_template must contain exactly one '{}' where the label goes, "
            f"e.g. 'This example is {{}}.'; got {template!r}"
        )
    try:
        template.format("label")
    except (IndexError, KeyError, ValueError) as exc:
        raise ClientError(
            f"hypothesis_template {template!r} cannot be formatted ({exc}); "
            "escape other braces as '{{' and '}}'"
        ) from None


def resolve_top_k(asked: int | None, configured: int | None) -> int | None:
    """The prefilter's k for one request: `configured` is the prefilter's `top_k` (None when no
    prefilter is configured); `asked` the request's `prefilter_top_k` (0 turns it off)."""
    if asked is None:
        return configured
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 0:
        raise ClientError(
            f"prefilter_top_k must be an integer >= 0 (0 turns it off); got {asked!r}"
        )
    if asked == 0:
        return None
    if configured is None:
        raise ClientError(
            "prefilter_top_k was given but this server has no prefilter configured "
            "(set prefilter.model); omit prefilter_top_k or send 0",
            status_code=400,
            type="prefilter_not_configured",
        )
    return asked


def _labels(labels: Any) -> tuple[list[str], list[str | None] | None]:
    """Names and own hypotheses of `labels`: a comma-separated string, or a list of strings and
    {"label", "hypothesis"} objects."""
    if isinstance(labels, str):
        return parse_labels(labels), None
    if not isinstance(labels, (list, tuple)):
        raise ClientError(
            "labels must be a list (of strings or {'label', 'hypothesis'} objects) or a "
            "comma-separated string"
        )
    names: list[str] = []
    hyps: list[str | None] = []
    for i, item in enumerate(labels):
        if isinstance(item, str):
            names.append(item)
            hyps.append(None)
            continue
        if not isinstance(item, Mapping):
            raise ClientError(
                f"labels[{i}] must be a string or an object {{'label': ..., 'hypothesis': ...}}"
            )
        unknown = set(item) - {"label", "hypothesis"}
        if unknown:
            raise ClientError(
                f"labels[{i}] has unknown keys {sorted(map(str, unknown))}; a label object has "
                "'label' and optionally 'hypothesis'"
            )
        name, hyp = item.get("label"), item.get("hypothesis")
        if not isinstance(name, str):
            raise ClientError(f"labels[{i}].label must be a string (the label's name)")
        if hyp is not None and (not isinstance(hyp, str) or not hyp.strip()):
            raise ClientError(
                f"labels[{i}].hypothesis must be a non-empty string, e.g. "
                "'The customer writes about an invoice or a payment.', or absent"
            )
        names.append(name)
        hyps.append(hyp)
    return names, (hyps if any(h is not None for h in hyps) else None)


def _options(
    defaults: RequestDefaults,
    long_text: str | None,
    chunk_stride: int | None,
    chunk_aggregate: str | None,
    threshold: float | None,
) -> dict[str, Any]:
    """The long-text and threshold fields, each checked, missing ones from `defaults`."""
    long_text = defaults.long_text if long_text is None else long_text
    if long_text not in LONG_TEXT_MODES:
        raise ClientError(f"long_text must be 'truncate' or 'chunk'; got {long_text!r}")
    stride = defaults.chunk_stride if chunk_stride is None else chunk_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
        raise ClientError(
            f"chunk_stride must be an integer >= 0 (tokens of overlap between windows); "
            f"got {stride!r}"
        )
    aggregate = defaults.chunk_aggregate if chunk_aggregate is None else chunk_aggregate
    if aggregate not in AGGREGATES:
        raise ClientError(f"chunk_aggregate must be 'max' or 'mean'; got {aggregate!r}")
    threshold = defaults.threshold if threshold is None else threshold
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise ClientError(f"threshold must be a number from 0 to 1; got {threshold!r}")
    return {
        "long_text": long_text,
        "chunk_stride": stride,
        "chunk_aggregate": aggregate,
        "threshold": None if threshold is None else float(threshold),
    }


def _normalise(
    texts: Sequence[str] | str,
    labels: Sequence[LabelInput] | str,
    hypothesis_template: str | None,
    multi_label: bool | None,
    top_k: int | None,
    defaults: RequestDefaults,
    options: dict[str, Any],
    limits: LimitsConfig,
) -> PreparedRequest:
    if hypothesis_template is None:
        hypothesis_template = defaults.hypothesis_template or DEFAULT_TEMPLATE
    if multi_label is None:
        multi_label = defaults.multi_label
    text_list = [texts] if isinstance(texts, str) else texts
    if not isinstance(text_list, list) or not all(isinstance(t, str) for t in text_list):
        raise ClientError("texts must be a list of strings")
    if not isinstance(hypothesis_template, str):
        raise ClientError("hypothesis_template must be a string")
    if not isinstance(multi_label, bool):
        raise ClientError("multi_label must be true or false")
    label_list, label_hyps = _labels(labels)
    if not text_list:
        raise ClientError("texts is empty: give at least one text")
    if not label_list:
        raise ClientError("labels is empty: give at least one label")
    for i, text in enumerate(text_list):
        if not text.strip():
            raise ClientError(f"texts[{i}] is empty: every text needs some content")
    for i, label in enumerate(label_list):
        if not label.strip():
            raise ClientError(f"labels[{i}] is empty: every label needs some content")
    return PreparedRequest(
        list(text_list),
        label_list,
        hypothesis_template,
        multi_label,
        top_k,
        label_hypotheses=label_hyps,
        max_chunks=limits.max_chunks,
        **options,
    )


def _check_content(request: PreparedRequest, limits: LimitsConfig) -> None:
    """Bounds that hold for every request, answered now or as a job."""
    if request.top_k is None and len(request.labels) > limits.max_labels:
        raise LimitExceeded(
            f"{len(request.labels)} labels exceed limits.max_labels={limits.max_labels}"
        )
    if request.top_k is not None and len(request.labels) > limits.max_prefilter_labels:
        raise LimitExceeded(
            f"{len(request.labels)} labels exceed limits.max_prefilter_labels="
            f"{limits.max_prefilter_labels} for a prefiltered request"
        )
    for i, text in enumerate(request.texts):
        if len(text) > limits.max_text_chars:
            raise LimitExceeded(
                f"texts[{i}] has {len(text)} characters, over limits.max_text_chars="
                f"{limits.max_text_chars}"
            )
    for i, label in enumerate(request.labels):
        if len(label) > limits.max_label_chars:
            raise LimitExceeded(
                f"labels[{i}] has {len(label)} characters, over limits.max_label_chars="
                f"{limits.max_label_chars}"
            )
    for i, hyp in enumerate(request.label_hypotheses or []):
        if hyp is not None and len(hyp) > limits.max_template_chars:
            raise LimitExceeded(
                f"labels[{i}].hypothesis has {len(hyp)} characters, over "
                f"limits.max_template_chars={limits.max_template_chars}"
            )
    template = request.hypothesis_template
    if len(template) > limits.max_template_chars:
        raise LimitExceeded(
            f"hypothesis_template has {len(template)} characters, over "
            f"limits.max_template_chars={limits.max_template_chars}"
        )
    validate_template(template)


def prepare_request(
    texts: Sequence[str] | str,
    labels: Sequence[LabelInput] | str,
    hypothesis_template: str | None,
    multi_label: bool | None,
    limits: LimitsConfig,
    top_k: int | None = None,
    *,
    long_text: str | None = None,
    chunk_stride: int | None = None,
    chunk_aggregate: str | None = None,
    threshold: float | None = None,
    defaults: RequestDefaults | None = None,
) -> PreparedRequest:
    """A request answered now; raise ClientError / LimitExceeded naming what to fix. A field
    given as None takes its value from `defaults` (the app's `defaults` section)."""
    defaults = defaults or RequestDefaults()
    options = _options(defaults, long_text, chunk_stride, chunk_aggregate, threshold)
    request = _normalise(
        texts, labels, hypothesis_template, multi_label, top_k, defaults, options, limits
    )
    if len(request.texts) > limits.max_texts:
        raise LimitExceeded(
            f"{len(request.texts)} texts exceed limits.max_texts={limits.max_texts} per request; "
            "split it or submit it as a job (POST /v1/jobs)"
        )
    _check_content(request, limits)
    if request.pairs > limits.max_pairs:
        windows = (
            f" x up to {request.windows_bound} windows (limits.max_chunks)"
            if request.chunked
            else ""
        )
        raise LimitExceeded(
            f"{len(request.texts)} texts x {request.scored_labels} labels{windows} = "
            f"{request.pairs} pairs exceed limits.max_pairs={limits.max_pairs}; split the "
            "request or submit it as a job (POST /v1/jobs)"
        )
    return request


def prepare_job(
    texts: Sequence[str] | str,
    labels: Sequence[LabelInput] | str,
    hypothesis_template: str | None,
    multi_label: bool | None,
    limits: LimitsConfig,
    top_k: int | None = None,
    *,
    long_text: str | None = None,
    chunk_stride: int | None = None,
    chunk_aggregate: str | None = None,
    threshold: float | None = None,
    defaults: RequestDefaults | None = None,
) -> PreparedRequest:
    """A job: up to `limits.max_job_texts` texts, run in chunks."""
    defaults = defaults or RequestDefaults()
    options = _options(defaults, long_text, chunk_stride, chunk_aggregate, threshold)
    request = _normalise(
        texts, labels, hypothesis_template, multi_label, top_k, defaults, options, limits
    )
    if len(request.texts) > limits.max_job_texts:
        raise LimitExceeded(
            f"{len(request.texts)} texts exceed limits.max_job_texts={limits.max_job_texts} "
            "per job; split the job"
        )
    _check_content(request, limits)
    return request
