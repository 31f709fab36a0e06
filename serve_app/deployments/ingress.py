"""The Ingress deployment: HTTP (the FastAPI app, built per replica) and the Python entry point.

`serve.get_app_handle("zsc")` returns a handle to this deployment, so its `classify` method is
the Python API: `handle.classify.remote(texts, labels, hypothesis_template=..., multi_label=...)`
returns exactly the body `POST /v1/classify` answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig, ServerSecrets
from serve_app.core.placement import Demand, PlacementError, placement_problem
from serve_app.core.requests import LabelInput, prepare_request, resolve_top_k
from serve_app.deployments.cluster import live_nodes, serve_http_host
from serve_app.deployments.limiter import RateLimitClient
from serve_app.deployments.scoring import Scorer, readiness_probe
from serve_app.http.app import create_app
from serve_app.http.middleware.auth import AuthConfigError, exposure_problem, open_or_keys
from serve_app.http.render import classify_response_body
from serve_app.http.routes.services import Services
from serve_app.observability import tracing


# Every error this constructor raises is a configuration check (placement, exposure, auth) that
# fails the same way each time: one try, so a misconfigured deploy (`serve run` included) fails
# in seconds with its line in `serve status`, not after Serve's three tries per replica. The
# count only covers a version's start (a deploy or redeploy, before one of its replicas runs);
# a running replica that dies is replaced as before.
@serve.deployment(name="Ingress", max_constructor_retry_count=1)
@serve.ingress()
class Ingress:
    def __init__(
        self,
        config: AppConfig,
        scorer: Scorer,
        jobs: DeploymentHandle | None = None,
        demands: list[Demand] | None = None,
    ) -> None:
        if config.check_placement and demands:
            # `serve run` builds the app before Ray starts, so build_app could not check: the
            # same check here, on the live cluster, turns a replica that would wait forever
            # for resources into a failed start that names it (in `serve status` too).
            problem = placement_problem(demands, live_nodes())
            if problem:
                raise PlacementError(problem)
        self.config = config
        self.scorer = scorer
        tracing.setup(config.tracing, "ingress")
        rate_limiter = None
        if config.rate_limit.enabled:
            rate_limiter = RateLimitClient(config.rate_limit)
            # Find or create the shared limiter now, so the first requests after a deploy are
            # limited instead of meeting an actor that is still starting (and failing open).
            rate_limiter.connect()
        # Read here, in the replica, so a key set in the pod's environment (e.g. from a
        # Kubernetes secret) never travels through the app's config; only digests stay.
        api_keys = open_or_keys(config.auth, ServerSecrets().key_environ(config.auth))
        known, host = serve_http_host()
        problem = exposure_problem(config.auth, api_keys, host if known else None)
        if problem:
            raise AuthConfigError(problem)
        liveness = scorer.liveness
        if jobs is not None:
            liveness.add("JobRunner", readiness_probe(jobs))
        self.services = Services(
            config=config,
            scorer=scorer,
            jobs=jobs,
            rate_limiter=rate_limiter,
            api_keys=api_keys,
            liveness=liveness,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.services)

    async def classify(
        self,
        texts: list[str] | str,
        labels: list[LabelInput] | str,
        hypothesis_template: str | None = None,
        multi_label: bool | None = None,
        prefilter_top_k: int | None = None,
        *,
        long_text: str | None = None,
        chunk_stride: int | None = None,
        chunk_aggregate: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """The Python API: the body `POST /v1/classify` answers for the same arguments (labels
        may be {"label", "hypothesis"} dicts; None takes the server's default: the template of
        the served model preset, else the pipeline's). In-cluster callers are trusted: no API
        key, no rate limit."""
        prepared = prepare_request(
            texts,
            labels,
            self.config.default_hypothesis_template
            if hypothesis_template is None
            else hypothesis_template,
            multi_label,
            self.config.limits,
            resolve_top_k(prefilter_top_k, self.config.prefilter_top_k),
            long_text=long_text,
            chunk_stride=chunk_stride,
            chunk_aggregate=chunk_aggregate,
            threshold=threshold,
            defaults=self.config.request_defaults(),
        )
        return classify_response_body(await self.scorer.classify(prepared))
