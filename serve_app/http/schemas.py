"""HTTP bodies of zsc's own API shape, validated by pydantic once at the edge.

Shape checks are pydantic's; size checks need the live limits, so they run in
`serve_app.core.requests`, which turns an accepted body into a `PreparedRequest`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from serve_app.config import AppConfig
from serve_app.core.requests import PreparedRequest, prepare_job, prepare_request, resolve_top_k
from serve_app.core.results import TextResult


class LabelObject(BaseModel):
    """A label with its own hypothesis, which replaces the template for this label."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(..., description="The label's name, as answers give it.")
    hypothesis: str | None = Field(
        None,
        description="The NLI hypothesis for this label, a whole sentence (e.g. 'The customer "
        "writes about an invoice or a payment.'); absent: the template with the label.",
    )


class RequestOptions(BaseModel):
    """The fields every scoring body shares beside its texts and labels; null or absent takes
    the server's default (the app config's `defaults` section)."""

    hypothesis_template: str | None = Field(
        None,
        description="NLI hypothesis with exactly one {} for the label (default: the server's, "
        "normally the model's own template).",
    )
    multi_label: StrictBool | None = Field(
        None, description="Score each label independently instead of across labels."
    )
    long_text: Literal["truncate", "chunk"] | None = Field(
        None,
        description="truncate: cut a text to the model's window, like the pipeline (default); "
        "chunk: score it in windows that overlap by chunk_stride tokens and combine each "
        "label's scores (each result then says how many `windows`).",
    )
    chunk_stride: StrictInt | None = Field(
        None,
        ge=0,
        description="With chunk: tokens of overlap between windows (>= 0, smaller than the "
        "window's room for the text; default 0).",
    )
    chunk_aggregate: Literal["max", "mean"] | None = Field(
        None,
        description="With chunk: a label's score over the windows is their max (default) or "
        "mean; single-label scores are renormalised to sum to 1.",
    )
    threshold: StrictFloat | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="0 to 1: each result gains `predicted`, the labels scoring at least this "
        "(multi-label) or the top label if it does (single-label); empty = none of these.",
    )

    def option_kwargs(self) -> dict[str, Any]:
        return {
            "long_text": self.long_text,
            "chunk_stride": self.chunk_stride,
            "chunk_aggregate": self.chunk_aggregate,
            "threshold": self.threshold,
        }


def label_inputs(labels: list[str | LabelObject] | str) -> list[Any] | str:
    """Labels as `prepare_request` takes them: strings, and objects as dicts."""
    if isinstance(labels, str):
        return labels
    return [
        label if isinstance(label, str) else label.model_dump(exclude_none=True) for label in labels
    ]


class ClassifyRequest(RequestOptions):
    """Body of `POST /v1/classify`: give `texts` (a list) or `text` (one string)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "texts": ["The new phone's battery lasts two days."],
                    "labels": ["technology", "sports", "politics"],
                },
                {
                    "texts": ["I was charged twice this month. " * 100],
                    "labels": [
                        {
                            "label": "billing",
                            "hypothesis": "The customer writes about an invoice or a payment.",
                        },
                        "shipping",
                    ],
                    "long_text": "chunk",
                    "threshold": 0.5,
                },
            ]
        },
    )

    texts: list[str] | None = Field(None, description="Texts to classify.")
    text: str | None = Field(None, description="One text to classify (instead of texts).")
    labels: list[str | LabelObject] | str = Field(
        ...,
        description="Candidate labels: a list of names or {label, hypothesis} objects, or a "
        "comma-separated string.",
    )
    prefilter_top_k: StrictInt | None = Field(
        None,
        description="With a prefilter configured: score only the k labels most similar to each "
        "text (absent: the configured top_k; 0: score every label).",
    )

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> ClassifyRequest:
        if (self.texts is None) == (self.text is None):
            raise ValueError("give exactly one of 'texts' (a list of strings) or 'text' (a string)")
        return self

    def text_list(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    def prepared(self, config: AppConfig) -> PreparedRequest:
        """This body checked against the live limits, as a request answered now."""
        return self._checked(prepare_request, config)

    def _checked(
        self, prepare: Callable[..., PreparedRequest], config: AppConfig
    ) -> PreparedRequest:
        return prepare(
            self.text_list(),
            label_inputs(self.labels),
            self.hypothesis_template,
            self.multi_label,
            config.limits,
            resolve_top_k(self.prefilter_top_k, config.prefilter_top_k),
            defaults=config.request_defaults(),
            **self.option_kwargs(),
        )


class JobRequest(ClassifyRequest):
    """Body of `POST /v1/jobs`: a classify body plus delivery options."""

    callback_url: str | None = Field(
        None, description="http(s) URL that receives a signed Standard Webhooks event at the end."
    )
    metadata: dict[str, Any] | None = Field(None, description="Echoed back on the job.")

    def prepared(self, config: AppConfig) -> PreparedRequest:
        """This body checked against the live limits, as a job (more texts, run in chunks)."""
        return self._checked(prepare_job, config)


class ClassifyResponse(BaseModel):
    model: str
    results: list[TextResult]
    usage: dict[str, int] = Field(
        description="pairs: (text, label) pairs scored; with a prefilter also labels_considered "
        "and labels_scored (per text)."
    )
    truncated: list[int] = Field(
        default_factory=list,
        description="Indices of texts cut to the model's window (the premise only, like the "
        "pipeline).",
    )
    warning: str | None = None
