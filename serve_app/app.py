"""The application builder: `serve run serve_app.app:build_app model=DIR`.

`build_app` validates its typed args (`AppConfig`), resolves the model once in the driver so a
missing or unreachable model fails at start with one message (not a replica crash loop), and
binds the deployments: Ingress -> Classifier, and Ingress -> JobRunner -> Classifier when
jobs are enabled.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.classifier import Classifier
from serve_app.config import AppConfig
from serve_app.ingress import Ingress
from serve_app.jobs.runner import JobRunner
from serve_app.limiter import RateLimitClient
from serve_app.model import ModelLoadError, read_label_indices, resolve_model_source
from serve_app.nli import ModelLabelError

APP_NAME = "zsc"
# Ray's resource on the head node; a tiny amount of it pins an actor there.
HEAD_NODE_RESOURCE = "node:__internal_head__"


class StartupError(SystemExit):
    """Stops `serve run` with one readable line instead of a traceback."""


def _deployment_options(scale: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": scale.max_ongoing_requests,
        # A stopping replica leaves the routing table, then answers what it holds before Ray
        # kills it (the drain is checked every graceful_shutdown_wait_loop_s, Serve's 2 s).
        "graceful_shutdown_timeout_s": scale.graceful_shutdown_timeout_s,
        "ray_actor_options": {
            "num_cpus": scale.num_cpus,
            "num_gpus": scale.num_gpus,
            "resources": dict(scale.resources),
        },
    }
    if scale.autoscaling is not None:
        # Serve sizes the deployment itself; it refuses num_replicas next to autoscaling_config.
        options["autoscaling_config"] = scale.autoscaling.model_dump(exclude_none=True)
    else:
        options["num_replicas"] = scale.num_replicas
    return options


def build_app(args: AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    try:
        source = resolve_model_source(config.model_settings())
        read_label_indices(source, config.revision)
    except (ModelLoadError, ModelLabelError) as exc:
        raise StartupError(f"zsc: {exc}") from None

    # Replicas load the already-resolved source, so they never touch the network.
    classifier = Classifier.options(
        **_deployment_options(config.classifier),
        user_config=config.batching.model_dump(),
    ).bind(
        config.model_settings().model_dump(),
        config.limits.model_dump(),
        config.batching.model_dump(),
        source,
    )
    jobs = None
    if config.jobs.enabled:
        # The only process that opens the SQLite job store, so it runs where the file is: the
        # head node (see serve_app/jobs/runner.py). It only waits on I/O: no CPU reserved.
        jobs = JobRunner.options(
            ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}
        ).bind(
            config.jobs.model_dump(),
            classifier,
            # Jobs draw on the same buckets as the ingress (one actor per app).
            RateLimitClient(config.rate_limit) if config.rate_limit.enabled else None,
        )
    return Ingress.options(**_deployment_options(config.ingress)).bind(
        config.model_dump(), classifier, jobs
    )
