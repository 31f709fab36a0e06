"""The Hugging Face task shape: `POST /` and `POST /predict` answer zero-shot classification
as the Inference API specification defines it, so `huggingface_hub.InferenceClient(base_url=...)
.zero_shot_classification(...)` and Inference Endpoints payloads work against zsc unmodified.

Payload: `{"inputs": "text" | ["text", ...], "parameters": {"candidate_labels": [...] | "a, b",
"multi_label", "hypothesis_template"}}`, with the inference toolkit's `candidateLabels` (and the
older spec's camelCase keys) accepted. Answer: for one input a list of `{"label", "score"}`
sorted by score; for a list of inputs, one such list per input. Scores are `/v1/classify`'s:
the same validation, limits, rate limit and engine. The body is a bare list, so the random-model
warning travels as the `X-Zsc-Warning` header.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from serve_app.core.requests import prepare_request, resolve_top_k
from serve_app.core.results import Classification
from serve_app.http.admission import admit
from serve_app.http.routes.services import ServicesDep
from serve_app.http.schemas import LabelObject, label_inputs

WARNING_HEADER = "X-Zsc-Warning"
# Path -> OpenAPI operation id. `/predict` is the inference toolkit's second route.
ROUTES = {"/": "hf_zero_shot_classification", "/predict": "hf_zero_shot_classification_predict"}


class HFParameters(BaseModel):
    """The task's parameters. Optional ones may also be null (the spec's types are optional),
    which means their default."""

    model_config = ConfigDict(extra="forbid")

    candidate_labels: list[str | LabelObject] | str = Field(
        ...,
        validation_alias=AliasChoices("candidate_labels", "candidateLabels"),
        description="Candidate labels, as a list or a comma-separated string (also accepted "
        "as candidateLabels, the inference toolkit's spelling); zsc also takes {label, "
        "hypothesis} objects as in /v1/classify.",
    )
    multi_label: StrictBool | None = Field(
        None,
        validation_alias=AliasChoices("multi_label", "multiLabel"),
        description="Score each label independently instead of across labels (default: the "
        "server's, normally false).",
    )
    hypothesis_template: str | None = Field(
        None,
        validation_alias=AliasChoices("hypothesis_template", "hypothesisTemplate"),
        description="NLI hypothesis with exactly one {} for the label (default: the "
        "server's, normally the model's own template).",
    )
    prefilter_top_k: StrictInt | None = Field(
        None, description="As in /v1/classify: with a prefilter, score only the top k labels."
    )
    # zsc's own parameters, where the Inference API specification is silent; the answer keeps
    # its shape, a list of {label, score} (so `predicted` and `windows` are not returned).
    long_text: Literal["truncate", "chunk"] | None = Field(
        None, description="As in /v1/classify: truncate (default) or chunk a long text."
    )
    chunk_stride: StrictInt | None = Field(
        None, ge=0, description="As in /v1/classify: tokens of overlap between windows."
    )
    chunk_aggregate: Literal["max", "mean"] | None = Field(
        None, description="As in /v1/classify: combine a label's window scores by max or mean."
    )
    threshold: StrictFloat | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="0 to 1: only labels scoring at least this are returned (multi-label), or "
        "the top label if it does (single-label); an empty list means none of these.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_spelling_each(cls, data: Any) -> Any:
        # Without this, the second spelling would be refused as an unknown field.
        if isinstance(data, dict):
            for field in cls.model_fields.values():
                if isinstance(field.validation_alias, AliasChoices):
                    given = [name for name in field.validation_alias.choices if name in data]
                    if len(given) > 1:
                        raise ValueError(f"give one of {' or '.join(map(str, given))}, not both")
        return data


class HFRequest(BaseModel):
    """The zero-shot-classification task payload of the Hugging Face Inference API."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": "The new phone's battery lasts two days.",
                    "parameters": {"candidate_labels": ["technology", "sports", "politics"]},
                }
            ]
        },
    )

    inputs: str | list[str] = Field(..., description="One text, or a list of texts.")
    parameters: HFParameters
    # The older Inference API's request options (wait_for_model, use_cache): accepted, unused.
    options: dict[str, Any] | None = None


class LabelScore(BaseModel):
    label: str = Field(description="A candidate label.")
    score: float = Field(description="Its probability, exactly as /v1/classify scores it.")


def hf_body(classification: Classification, one_input: bool) -> list[Any]:
    """Each text's labels and scores, highest first (the engine's order), as the spec pairs them."""
    # With a threshold, the list keeps the `predicted` labels only: they are its top entries.
    per_text = [
        [{"label": label, "score": score} for label, score in zip(r.labels, r.scores)][
            : None if r.predicted is None else len(r.predicted)
        ]
        for r in classification.results
    ]
    return per_text[0] if one_input else per_text


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


OK_RESPONSE = {
    "description": "For one input, its labels sorted by score; for a list, one list per input.",
    "headers": {
        WARNING_HEADER: _header("Set when the served model is a random test model."),
        "RateLimit-Policy": _header("With a rate limit: the caller's policy (IETF draft)."),
        "RateLimit": _header("With a rate limit: what is left of the caller's quota."),
    },
}


async def predict(body: HFRequest, request: Request, response: Response, svc: ServicesDep) -> Any:
    params = body.parameters
    config = svc.config
    prepared = prepare_request(
        body.inputs,
        label_inputs(params.candidate_labels),
        params.hypothesis_template,
        params.multi_label,
        config.limits,
        resolve_top_k(params.prefilter_top_k, config.prefilter_top_k),
        long_text=params.long_text,
        chunk_stride=params.chunk_stride,
        chunk_aggregate=params.chunk_aggregate,
        threshold=params.threshold,
        defaults=config.request_defaults(),
    )
    # Overload first: a request refused for it costs the caller no rate-limit tokens.
    with svc.inflight.hold(prepared.pairs):
        await admit(svc.rate_limiter, request, response, prepared.pairs)
        classification = await svc.scorer.classify(prepared)
    if classification.warning is not None:
        response.headers[WARNING_HEADER] = classification.warning
    return hf_body(classification, isinstance(body.inputs, str))


router = APIRouter(tags=["hugging face"])
for _path, _operation_id in ROUTES.items():
    router.add_api_route(
        _path,
        predict,
        methods=["POST"],
        response_model=list[LabelScore] | list[list[LabelScore]],
        responses={200: OK_RESPONSE},
        summary="Zero-shot classification in the Hugging Face Inference API shape",
        description="What `huggingface_hub.InferenceClient(base_url=...)."
        "zero_shot_classification` posts (and the inference toolkit's payload, "
        "`candidateLabels` included): for one input, a list of {label, score} sorted by "
        "score; for a list of inputs, one such list per input. Scores equal /v1/classify's; "
        'errors are its `{"error": {"type", "message"}}` with the same statuses.',
        operation_id=_operation_id,
    )
