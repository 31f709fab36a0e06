"""HTTP bodies and the validation every serving path shares (HTTP, handle, jobs).

Shape checks are pydantic's; size checks need the live `LimitsConfig`, so they run in
`prepare_request`, which turns any accepted body into one normalised `PreparedRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from serve_app.config import DEFAULT_TEMPLATE, LimitsConfig
from serve_app.errors import ClientError, LimitExceeded
from serve_app.nli import ClassificationResult, parse_labels


class ClassifyRequest(BaseModel):
    """Body of `POST /v1/classify`: give `texts` (a list) or `text` (one string)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "texts": ["The new phone's battery lasts two days."],
                    "labels": ["technology", "sports", "politics"],
                }
            ]
        },
    )

    texts: list[str] | None = Field(None, description="Texts to classify.")
    text: str | None = Field(None, description="One text to classify (instead of texts).")
    labels: list[str] | str = Field(
        ..., description="Candidate labels, as a list or a comma-separated string."
    )
    hypothesis_template: str = Field(
        DEFAULT_TEMPLATE, description="NLI hypothesis with exactly one {} for the label."
    )
    multi_label: StrictBool = Field(
        False, description="Score each label independently instead of across labels."
    )

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> "ClassifyRequest":
        if (self.texts is None) == (self.text is None):
            raise ValueError("give exactly one of 'texts' (a list of strings) or 'text' (a string)")
        return self

    def text_list(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class JobRequest(ClassifyRequest):
    """Body of `POST /v1/jobs`: a classify body plus delivery options."""

    callback_url: str | None = Field(
        None, description="http(s) URL that receives a signed Standard Webhooks event at the end."
    )
    metadata: dict[str, Any] | None = Field(None, description="Echoed back on the job.")


class ClassifyResponse(BaseModel):
    model: str
    results: list[dict[str, Any]]
    usage: dict[str, int]
    truncated: list[int] = Field(
        default_factory=list,
        description="Indices of texts cut to the model's window (the premise only, like the pipeline).",
    )
    warning: str | None = None


@dataclass(frozen=True)
class PreparedRequest:
    texts: list[str]
    labels: list[str]
    hypothesis_template: str
    multi_label: bool

    @property
    def pairs(self) -> int:
        return len(self.texts) * len(self.labels)


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


def prepare_request(
    texts: list[str] | str,
    labels: list[str] | str,
    hypothesis_template: str,
    multi_label: bool,
    limits: LimitsConfig,
    max_texts: int | None = None,
) -> PreparedRequest:
    """Normalise and bound one request; raise ClientError / LimitExceeded naming what to fix."""
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

    if max_texts is None and len(text_list) > limits.max_texts:
        raise LimitExceeded(
            f"{len(text_list)} texts exceed limits.max_texts={limits.max_texts} per request; "
            "split it or submit it as a job (POST /v1/jobs)"
        )
    if max_texts is not None and len(text_list) > max_texts:
        raise LimitExceeded(
            f"{len(text_list)} texts exceed limits.max_job_texts={max_texts} per job; split the job"
        )
    if len(label_list) > limits.max_labels:
        raise LimitExceeded(
            f"{len(label_list)} labels exceed limits.max_labels={limits.max_labels}"
        )
    if max_texts is None and len(text_list) * len(label_list) > limits.max_pairs:
        raise LimitExceeded(
            f"{len(text_list)} texts x {len(label_list)} labels = "
            f"{len(text_list) * len(label_list)} pairs exceed limits.max_pairs={limits.max_pairs}; "
            "split the request or submit it as a job (POST /v1/jobs)"
        )
    for i, text in enumerate(text_list):
        if len(text) > limits.max_text_chars:
            raise LimitExceeded(
                f"texts[{i}] has {len(text)} characters, over limits.max_text_chars="
                f"{limits.max_text_chars}"
            )
    for i, label in enumerate(label_list):
        if len(label) > limits.max_label_chars:
            raise LimitExceeded(
                f"labels[{i}] has {len(label)} characters, over limits.max_label_chars="
                f"{limits.max_label_chars}"
            )
    if len(hypothesis_template) > limits.max_template_chars:
        raise LimitExceeded(
            f"hypothesis_template has {len(hypothesis_template)} characters, over "
            f"limits.max_template_chars={limits.max_template_chars}"
        )
    validate_template(hypothesis_template)
    return PreparedRequest(text_list, label_list, hypothesis_template, multi_label)


def prepare_body(body: ClassifyRequest, limits: LimitsConfig, max_texts: int | None = None) -> PreparedRequest:
    return prepare_request(
        body.text_list(), body.labels, body.hypothesis_template, body.multi_label, limits, max_texts
    )


__all__ = [
    "ClassificationResult",
    "ClassifyRequest",
    "ClassifyResponse",
    "JobRequest",
    "PreparedRequest",
    "prepare_body",
    "prepare_request",
    "validate_template",
]
