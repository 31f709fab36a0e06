"""The path of one validated request through the model deployments, shared by the HTTP routes,
the Python handle and the job runner: the prefilter (when the request has more labels than its
`top_k`), then the Classifier. Holds handles only; it pickles, so deployments pass it on."""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification


class Scorer:
    def __init__(self, classifier: DeploymentHandle, prefilter: DeploymentHandle | None = None):
        self.classifier = classifier
        self.prefilter = prefilter

    async def classify(self, request: PreparedRequest) -> Classification:
        if request.needs_prefilter:
            # resolve_top_k only sets top_k when a prefilter is configured.
            assert self.prefilter is not None and request.top_k is not None
            labels, template = request.labels, request.hypothesis_template
            if request.label_hypotheses is not None:
                # Labels with their own hypotheses: embed each label's full hypothesis.
                labels, template = request.hypothesis_list(), "{}"
            candidates = await self.prefilter.top_k.remote(
                request.texts, labels, template, request.top_k
            )
            request = request.with_candidates(candidates)
        result: Classification = await self.classifier.classify.remote(request)
        return result

    async def check(self, request: PreparedRequest) -> None:
        """Raise the ClientError scoring this request's labels would raise (for jobs, which are
        validated whole at submission and scored later)."""
        await self.classifier.check.remote(request)

    async def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.classifier.model_info.remote()
        return info
