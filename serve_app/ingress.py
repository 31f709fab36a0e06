"""The Ingress deployment: HTTP (FastAPI, built per replica) and the Python entry point.

`serve.get_app_handle("zsc")` returns a handle to this deployment, so its `classify` method is
the Python API: `handle.classify.remote(texts, labels, hypothesis_template=..., multi_label=...)`
returns exactly the body `POST /v1/classify` answers.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api import Services, create_app
from serve_app.auth import ApiKeys
from serve_app.config import DEFAULT_TEMPLATE, AppConfig
from serve_app.limiter import RateLimitClient
from serve_app.schemas import prepare_request


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(
        self,
        config: dict[str, Any],
        classifier: DeploymentHandle,
        jobs: DeploymentHandle | None = None,
    ):
        self.config = AppConfig.model_validate(config)
        self.classifier = classifier
        rate_limiter = None
        if self.config.rate_limit.enabled:
            rate_limiter = RateLimitClient(self.config.rate_limit)
            # Find or create the shared limiter now, so the first requests after a deploy are
            # limited instead of meeting an actor that is still starting (and failing open).
            rate_limiter.connect()
        self.services = Services(
            config=self.config,
            classifier=classifier,
            jobs=jobs,
            rate_limiter=rate_limiter,
            # Read here, in the replica, so a key set in the pod's environment (e.g. from a
            # Kubernetes secret) never travels through the app's config; only digests stay.
            api_keys=ApiKeys.from_config(self.config.auth, os.environ),
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.services)

    async def classify(
        self,
        texts: list[str] | str,
        labels: list[str] | str,
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
    ) -> dict[str, Any]:
        prepared = prepare_request(
            texts, labels, hypothesis_template, multi_label, self.config.limits
        )
        return await self.classifier.classify_prepared.remote(prepared)
