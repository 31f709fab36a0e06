"""Serve deployment options from a typed `DeploymentScale`: one translation for every deployment."""

from __future__ import annotations

from typing import Any

from serve_app.config import DeploymentScale

# Seconds an overloaded caller is told to wait before resending (the `Retry-After` header).
RETRY_AFTER_S = 1


def deployment_options(scale: DeploymentScale, num_cpus: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": scale.max_ongoing_requests,
        "max_queued_requests": scale.max_queued_requests,
        # Where Serve's proxy answers an overflow itself (the ingress's queue), it then says when
        # to come back; the Classifier's overflow is answered by the ingress (http/errors.py).
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        # A stopping replica leaves the routing table, then answers what it holds before Ray
        # kills it (the drain is checked every graceful_shutdown_wait_loop_s, Serve's 2 s).
        "graceful_shutdown_timeout_s": scale.graceful_shutdown_timeout_s,
        "ray_actor_options": {
            "num_cpus": num_cpus,
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
