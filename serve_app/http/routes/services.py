"""What the routes need from their ingress replica, handed to each route with FastAPI's `Depends`.

`create_app` puts one `Services` on `app.state`; a route declares `svc: ServicesDep` and gets it.
The Ray-backed scorer (`serve_app.deployments.scoring.Scorer`) and a scripted one in the tests
both implement `ScoringService`, so the HTTP edge runs in-process without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from serve_app.config import AppConfig
from serve_app.core.health import Liveness
from serve_app.core.inflight import InflightPairs
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.http.admission import Admission
from serve_app.http.forwarded import TrustedProxies
from serve_app.http.middleware.auth import ApiKeys


class ScoringService(Protocol):
    """Scores a validated request: the prefilter when it applies, then the cross-encoder."""

    async def classify(self, request: PreparedRequest) -> Classification: ...

    async def check_labels(self, request: PreparedRequest) -> None: ...

    async def model_info(self) -> dict[str, Any]: ...


@dataclass
class Services:
    """What the routes need; one per ingress replica."""

    config: AppConfig
    scorer: ScoringService
    jobs: Any = None  # the JobRunner's handle; None when jobs.enabled is false
    rate_limiter: Admission | None = None  # None when rate_limit.enabled is false
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys({}))  # none: everything is open
    # The deployments /healthz checks (the scorer's, the job runner); empty: ready at once.
    liveness: Liveness = field(default_factory=Liveness)
    proxies: TrustedProxies = field(init=False)  # config.trusted_proxies, parsed once
    # Pairs this replica has in scoring (ingress.max_scoring_pairs): overload is refused here.
    inflight: InflightPairs = field(init=False)

    def __post_init__(self) -> None:
        self.proxies = TrustedProxies(self.config.trusted_proxies)
        self.inflight = InflightPairs(self.config.ingress.max_scoring_pairs)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
