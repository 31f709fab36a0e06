"""HTTP bodies of zsc's own API shape, validated by pydantic once at the edge.

Shape checks are pydantic's; size checks need the live limits, so they run in
`serve_app.core.requests`, which turns an accepted body into a `PreparedRequest`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from serve_app.config import AppConfig
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.core.requests import PreparedRequest, prepare_job, prepare_request, resolve_top_k
from serve_app.core.results import TextResult


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
    hypothesis_template: str | None = Field(
        None,
        description="NLI hypothesis with exactly one {} for the label; default: the served "
        f"model preset's template, else {DEFAULT_TEMPLATE!r} (GET /v1/model shows it).",
    )
    multi_label: StrictBool = Field(
        False, description="Score each label independently instead of across labels."
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
            self.labels,
            config.default_hypothesis_template
            if self.hypothesis_template is None
            else self.hypothesis_template,
            self.multi_label,
            config.limits,
            resolve_top_k(self.prefilter_top_k, config.prefilter_top_k),
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
