"""One classification request, validated once and passed on typed.

Every serving path (HTTP, the Python handle, jobs) turns its input into a `PreparedRequest`
here, so a mistake is the same 4xx whichever way it came. `prepare_request` bounds a request
answered now; `prepare_job` bounds a job, whose texts are chunked and may be many more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.config import LimitsConfig
from serve_app.core.errors import ClientError, LimitExceeded
from serve_app.core.nli import parse_labels


@dataclass(frozen=True)
class PreparedRequest:
    """Texts x labels to score. `top_k`: the prefilter keeps that many labels per text (None:
    every label is scored). `candidates`: the label indices the prefilter kept for each text,
    set once it has run (None: all labels)."""

    texts: list[str]
    labels: list[str]
    hypothesis_template: str
    multi_label: bool
    top_k: int | None = None
    candidates: list[list[int]] | None = None

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
    def pairs(self) -> int:
        """(text, label) pairs the cross-encoder runs: what a request costs."""
        return len(self.texts) * self.scored_labels

    def label_sets(self) -> list[list[str]]:
        """Each text's labels, in the request's order."""
        if self.candidates is None:
            return [self.labels] * len(self.texts)
        return [[self.labels[i] for i in kept] for kept in self.candidates]

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


def _normalise(
    texts: Sequence[str] | str,
    labels: Sequence[str] | str,
    hypothesis_template: str,
    multi_label: bool,
    top_k: int | None,
) -> PreparedRequest:
    text_list = [texts] if isinstance(texts, str) else texts
    if not isinstance(text_list, list) or not all(isinstance(t, str) for t in text_list):
        raise ClientError("texts must be a list of strings")
    if not isinstance(labels, (str, list)) or (
        isinstance(labels, list) and not all(isinstance(label, str) for label in labels)
    ):
        raise ClientError("labels must be a list of strings or a comma-separated string")
    if not isinstance(hypothesis_template, str):
        raise ClientError("hypothesis_template must be a string")
    if not isinstance(multi_label, bool):
        raise ClientError("multi_label must be true or false")
    label_list = parse_labels(labels)
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
    return PreparedRequest(list(text_list), label_list, hypothesis_template, multi_label, top_k)


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
    template = request.hypothesis_template
    if len(template) > limits.max_template_chars:
        raise LimitExceeded(
            f"hypothesis_template has {len(template)} characters, over "
            f"limits.max_template_chars={limits.max_template_chars}"
        )
    validate_template(template)


def prepare_request(
    texts: Sequence[str] | str,
    labels: Sequence[str] | str,
    hypothesis_template: str,
    multi_label: bool,
    limits: LimitsConfig,
    top_k: int | None = None,
) -> PreparedRequest:
    """A request answered now; raise ClientError / LimitExceeded naming what to fix."""
    request = _normalise(texts, labels, hypothesis_template, multi_label, top_k)
    if len(request.texts) > limits.max_texts:
        raise LimitExceeded(
            f"{len(request.texts)} texts exceed limits.max_texts={limits.max_texts} per request; "
            "split it or submit it as a job (POST /v1/jobs)"
        )
    _check_content(request, limits)
    if request.pairs > limits.max_pairs:
        raise LimitExceeded(
            f"{len(request.texts)} texts x {request.scored_labels} labels = {request.pairs} pairs "
            f"exceed limits.max_pairs={limits.max_pairs}; split the request or submit it as a "
            "job (POST /v1/jobs)"
        )
    return request


def prepare_job(
    texts: Sequence[str] | str,
    labels: Sequence[str] | str,
    hypothesis_template: str,
    multi_label: bool,
    limits: LimitsConfig,
    top_k: int | None = None,
) -> PreparedRequest:
    """A job: up to `limits.max_job_texts` texts, run in chunks."""
    request = _normalise(texts, labels, hypothesis_template, multi_label, top_k)
    if len(request.texts) > limits.max_job_texts:
        raise LimitExceeded(
            f"{len(request.texts)} texts exceed limits.max_job_texts={limits.max_job_texts} "
            "per job; split the job"
        )
    _check_content(request, limits)
    return request
