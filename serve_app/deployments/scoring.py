"""The path of one validated request through the model deployments, shared by the HTTP routes,
the Python handle and the job runner: the prefilter (when the request has more labels than its
`top_k`), then the Classifier. Holds handles only; it pickles, so deployments pass it on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.core.errors import OVERLOADED_MESSAGE, Overloaded, ServiceUnavailable
from serve_app.core.health import Liveness, Probe
from serve_app.core.requests import PreparedRequest
from serve_app.core.results import Classification
from serve_app.observability import tracing


@contextmanager
def _shedding() -> Iterator[None]:
    """Serve's refusals as zsc's own: an app's handler for BackPressureError is replaced by
    Serve's plain-text one once the app is built, so the ingress never sees them as such."""
    try:
        yield
    except BackPressureError:
        raise Overloaded(OVERLOADED_MESSAGE) from None
    except DeploymentUnavailableError as exc:
        raise ServiceUnavailable(
            f"a deployment is unavailable ({exc.message}); retry after 1 second"
        ) from None


def readiness_probe(handle: DeploymentHandle) -> Probe:
    """A deployment's readiness probe: its `ping`. A refusal because every replica's queue is
    full counts as an answer: the router refused with running replicas, so the deployment is up,
    and a pod reported unready while overloaded would only push its load onto the others."""

    async def probe() -> None:
        try:
            await handle.ping.remote()
        except BackPressureError:
            return

    return probe


class Scorer:
    def __init__(self, classifier: DeploymentHandle, prefilter: DeploymentHandle | None = None):
        self.classifier = classifier
        self.prefilter = prefilter
        self._liveness: Liveness | None = None

    @property
    def liveness(self) -> Liveness:
        """What answered lately, for /healthz: made in the process that uses it (each ingress
        replica, the job runner), never pickled with a deployment's arguments."""
        if self._liveness is None:
            self._liveness = Liveness({"Classifier": readiness_probe(self.classifier)})
            if self.prefilter is not None:
                self._liveness.add("Prefilter", readiness_probe(self.prefilter))
        return self._liveness

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_liveness": None}

    async def classify(self, request: PreparedRequest) -> Classification:
        with _shedding():
            if request.needs_prefilter:
                # resolve_top_k only sets top_k when a prefilter is configured.
                assert self.prefilter is not None and request.top_k is not None
                labels, template = request.labels, request.hypothesis_template
                if request.label_hypotheses is not None:
                    # Labels with their own hypotheses: embed each label's full hypothesis.
                    labels, template = request.hypothesis_list(), "{}"
                with tracing.span("zsc.prefilter"):
                    candidates = await self.prefilter.top_k.remote(
                        request.texts, labels, template, request.top_k
                    )
                self.liveness.answered("Prefilter")
                request = request.with_candidates(candidates)
            # The trace crosses into the Classifier's process as a W3C traceparent string.
            result: Classification = await self.classifier.classify.remote(
                request, tracing.traceparent()
            )
            self.liveness.answered("Classifier")
        return result

    async def check_labels(self, request: PreparedRequest) -> None:
        """Raise the ClientError scoring this request's labels would raise (for jobs, which are
        validated whole at submission and scored later)."""
        with _shedding():
            await self.classifier.check_labels.remote(request)

    async def model_info(self) -> dict[str, Any]:
        with _shedding():
            info: dict[str, Any] = await self.classifier.model_info.remote()
        return info
