"""The composition root: `serve run serve_app.app:build_app model=DIR`.

`build_app` validates its typed args once (`AppConfig`), resolves the model in the driver so a
missing or unreachable model fails at start with one message (not a replica crash loop), sizes
the Classifier for the machine when asked (`num_cpus: auto`), and binds the deployments with
typed configs: Ingress -> Scorer -> (Prefilter ->) Classifier, and Ingress -> JobRunner ->
Scorer when jobs are enabled.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.core.errors import StartupError
from serve_app.core.nli import ModelLabelError
from serve_app.deployments.classifier import Classifier
from serve_app.deployments.ingress import Ingress
from serve_app.deployments.job_runner import JobRunner
from serve_app.deployments.limiter import RateLimitClient
from serve_app.deployments.options import deployment_options
from serve_app.deployments.scoring import Scorer
from serve_app.engine.backends import backend_type
from serve_app.engine.source import ModelLoadError, read_label_indices, resolve_model_source
from serve_app.engine.threads import affinity_cpus

APP_NAME = "zsc"
# Ray's resource on the head node; a tiny amount of it pins an actor there.
HEAD_NODE_RESOURCE = "node:__internal_head__"
# The CPU reservation of the Classifier with `num_cpus: auto` never drops below this.
MIN_AUTO_CPUS = 0.5


def machine_cpus() -> float:
    """The CPUs of the machine the app is built on, as Ray counts them when it runs there."""
    import ray

    if ray.is_initialized():
        node = ray.get_runtime_context().get_node_id()
        for info in ray.nodes():
            if info.get("NodeID") == node and info.get("Alive"):
                # Never more than the cores this process may run on: logical CPUs can be
                # over-committed (a test cluster), threads should not be.
                return float(min(info["Resources"].get("CPU", 1.0), affinity_cpus()))
    return float(affinity_cpus())


def auto_classifier_cpus(config: AppConfig) -> float:
    """`num_cpus: auto`: the machine's CPUs less what the ingress replicas reserve (the proxy
    and the job runner reserve none), for one Classifier replica on a single machine."""
    ingress = config.ingress
    replicas = ingress.num_replicas if isinstance(ingress.num_replicas, int) else 1
    if ingress.autoscaling is not None:
        replicas = ingress.autoscaling.initial_replicas or ingress.autoscaling.min_replicas
    return max(MIN_AUTO_CPUS, machine_cpus() - ingress.num_cpus * replicas)


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    settings = config.model_settings()
    try:
        source = resolve_model_source(
            config.model, config.revision, backend_type(config.backend).files(config.onnx_file)
        )
        read_label_indices(source)
    except (ModelLoadError, ModelLabelError) as exc:
        raise StartupError(f"zsc: {exc}") from None

    # Threads follow the reservation when build_app sized it; else Ray's OMP_NUM_THREADS.
    budget: float | None = None
    if config.classifier.num_cpus == "auto":
        budget = classifier_cpus = auto_classifier_cpus(config)
    else:
        classifier_cpus = config.classifier.num_cpus
    # Replicas load the already-resolved source, so they never touch the network. Batching is
    # bound once, as user_config, so a redeploy with a new one retunes running replicas.
    classifier = Classifier.options(
        **deployment_options(config.classifier, classifier_cpus),
        user_config=config.batching.model_dump(),
    ).bind(settings, source, budget, config.tracing)
    scorer = Scorer(classifier, _prefilter(config))
    jobs = None
    if config.jobs.enabled:
        # The only process that opens the SQLite job store, so it runs where the file is: the
        # head node (docs/OPERATIONS.md). It only waits on I/O: no CPU reserved.
        jobs = JobRunner.options(
            ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}
        ).bind(
            config.jobs,
            scorer,
            # Jobs draw on the same buckets as the ingress (the same limiter actors).
            RateLimitClient(config.rate_limit) if config.rate_limit.enabled else None,
        )
    return Ingress.options(**deployment_options(config.ingress, config.ingress.num_cpus)).bind(
        config, scorer, jobs
    )


def _prefilter(config: AppConfig) -> Any:
    """The bi-encoder deployment when a prefilter is configured, else None."""
    if not config.prefilter.enabled:
        return None
    from serve_app.deployments.prefilter import bind_prefilter

    return bind_prefilter(config.prefilter)
