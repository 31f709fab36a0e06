"""The composition root: `serve run serve_app.app:build_app model=DIR`.

`build_app` validates its typed args once (`AppConfig`), checks the model in the driver so a
missing or unreachable model fails at start with one message (not a replica crash loop) and
pins it to the commit found (each replica resolves that on its own node), sizes
the Classifier for the machine when asked (`num_cpus: auto`), and binds the deployments with
typed configs: Ingress -> Scorer -> (Prefilter ->) Classifier, and Ingress -> JobRunner ->
Scorer when jobs are enabled.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig, DeploymentScale, ServerSecrets
from serve_app.core.errors import StartupError
from serve_app.core.nli import ModelLabelError
from serve_app.core.placement import Demand, placement_problem
from serve_app.deployments.classifier import Classifier
from serve_app.deployments.cluster import live_nodes, serve_http_host
from serve_app.deployments.ingress import Ingress
from serve_app.deployments.job_runner import JobRunner
from serve_app.deployments.limiter import RateLimitClient
from serve_app.deployments.options import deployment_options
from serve_app.deployments.scoring import Scorer
from serve_app.engine.backends import backend_type
from serve_app.engine.source import ModelLoadError, pin_model, read_label_indices
from serve_app.engine.threads import affinity_cpus
from serve_app.http.middleware.auth import AuthConfigError, exposure_problem, open_or_keys
from serve_app.jobs.store import is_shared, store_url

# Ray's resource on the head node; a tiny amount of it pins an actor there.
HEAD_NODE_RESOURCE = "node:__internal_head__"
JOB_RUNNER_HEAD_SHARE = 0.001
# The CPU reservation of the Classifier with `num_cpus: auto` never drops below this.
MIN_AUTO_CPUS = 0.5


def node_cpus(ray_cpus: float | None) -> float:
    """The CPUs to size a node's layout for: Ray's count for the node, never more than the cores
    this process may run on (logical CPUs can be over-committed, as on a test cluster; threads
    should not be); without Ray, the cores alone."""
    cores = float(affinity_cpus())
    return cores if ray_cpus is None else min(ray_cpus, cores)


def machine_cpus() -> float:
    """The CPUs of the machine the app is built on, as Ray counts them when it runs there."""
    import ray

    if ray.is_initialized():
        node = ray.get_runtime_context().get_node_id()
        for info in ray.nodes():
            if info.get("NodeID") == node and info.get("Alive"):
                return node_cpus(float(info["Resources"].get("CPU", 1.0)))
    return node_cpus(None)


def initial_replicas(scale: DeploymentScale) -> int:
    """The replicas a deployment starts with (what must be placed at deploy time)."""
    if scale.autoscaling is not None:
        return scale.autoscaling.initial_replicas or scale.autoscaling.min_replicas
    return scale.num_replicas if isinstance(scale.num_replicas, int) else 1


def auto_classifier_cpus(config: AppConfig, cpus: float | None = None) -> float:
    """`num_cpus: auto`: the machine's CPUs (`cpus`, else `machine_cpus()`) less what every
    other deployment the config enables reserves (the ingress replicas, the prefilter's; the
    proxy and the job runner reserve none), for one Classifier replica on a single machine."""
    others = config.ingress.num_cpus * initial_replicas(config.ingress)
    if config.prefilter.enabled:
        deployment = config.prefilter.deployment
        others += deployment.num_cpus * initial_replicas(deployment)
    return max(MIN_AUTO_CPUS, (machine_cpus() if cpus is None else cpus) - others)


def _resources(scale: DeploymentScale, num_cpus: float) -> dict[str, float]:
    return {"CPU": num_cpus, "GPU": scale.num_gpus, **scale.resources}


def layout_demands(config: AppConfig, classifier_cpus: float) -> list[Demand]:
    """What each deployment the config enables reserves, as `placement_problem` checks it."""
    demands = [
        Demand(
            "Classifier",
            initial_replicas(config.classifier),
            _resources(config.classifier, classifier_cpus),
        )
    ]
    if config.prefilter.enabled:
        scale = config.prefilter.deployment
        demands.append(
            Demand("Prefilter", initial_replicas(scale), _resources(scale, scale.num_cpus))
        )
    if config.jobs.enabled:
        options = job_runner_options(config)
        resources = options["ray_actor_options"].get("resources", {})
        demands.append(Demand("JobRunner", options["num_replicas"], resources))
    demands.append(
        Demand(
            "Ingress",
            initial_replicas(config.ingress),
            _resources(config.ingress, config.ingress.num_cpus),
        )
    )
    return demands


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    try:
        ref, source = pin_model(
            config.model, config.revision, backend_type(config.backend).files(config.onnx_file)
        )
        read_label_indices(source, config.label_indices_map())
    except (ModelLoadError, ModelLabelError) as exc:
        preset = f"preset {config.preset!r}: " if config.preset else ""
        raise StartupError(f"zsc: {preset}{exc}") from None
    # From here on the config names what every replica resolves on its own node: the hub id
    # pinned to the commit found here, or the local directory as an absolute path.
    pinned: dict[str, Any] = {"model": ref.model, "revision": ref.revision}
    if config.prefilter.enabled:
        from serve_app.deployments.prefilter import pin_prefilter

        pinned["prefilter"] = pin_prefilter(config.prefilter)
    config = config.model_copy(update=pinned)
    settings = config.model_settings()

    # Threads follow the reservation when build_app sized it; else Ray's OMP_NUM_THREADS.
    budget: float | None = None
    if config.classifier.num_cpus == "auto":
        budget = classifier_cpus = auto_classifier_cpus(config)
    else:
        classifier_cpus = config.classifier.num_cpus
    _check_exposure(config)
    demands = layout_demands(config, classifier_cpus)
    if config.check_placement:
        # Ray is initialised here under `serve deploy` and in Python drivers; `serve run` calls
        # the builder before it starts Ray, and the Ingress replica checks the same at start.
        problem = placement_problem(demands, live_nodes())
        if problem:
            raise StartupError(problem)
    # Each replica resolves the pinned model on its own node. Batching is bound once, as
    # user_config, so a redeploy with a new one retunes running replicas.
    classifier = Classifier.options(
        **deployment_options(config.classifier, classifier_cpus),
        user_config=config.batching.model_dump(),
    ).bind(settings, budget, config.tracing)
    scorer = Scorer(classifier, _prefilter(config))
    jobs = None
    if config.jobs.enabled:
        jobs = JobRunner.options(**job_runner_options(config)).bind(
            config.jobs,
            scorer,
            # Jobs draw on the same buckets as the ingress (the same limiter actors).
            RateLimitClient(config.rate_limit) if config.rate_limit.enabled else None,
        )
    return Ingress.options(**deployment_options(config.ingress, config.ingress.num_cpus)).bind(
        config, scorer, jobs, demands
    )


def job_runner_options(config: AppConfig) -> dict[str, Any]:
    """JobRunner replicas only wait on I/O: no CPU reserved. With PostgreSQL, `jobs.runners` of
    them anywhere; with SQLite one, on the head node that holds the file (docs/OPERATIONS.md)."""
    if is_shared(store_url(config.jobs.store_url)):
        return {"num_replicas": config.jobs.runners, "ray_actor_options": {"num_cpus": 0}}
    if config.jobs.runners != 1:
        raise StartupError(
            "zsc: jobs.runners > 1 needs a PostgreSQL job store (jobs.store: postgresql://... "
            "or env ZSC_JOBS_STORE); a SQLite file is opened by one runner"
        )
    return {
        "num_replicas": 1,
        "ray_actor_options": {
            "num_cpus": 0,
            "resources": {HEAD_NODE_RESOURCE: JOB_RUNNER_HEAD_SHARE},
        },
    }


def _prefilter(config: AppConfig) -> Any:
    """The bi-encoder deployment when a prefilter is configured, else None."""
    if not config.prefilter.enabled:
        return None
    from serve_app.deployments.prefilter import bind_prefilter

    return bind_prefilter(config.prefilter)


def _check_exposure(config: AppConfig) -> None:
    """Closed by default where reachable: refuse a non-loopback bind without keys, here when the
    running Serve's bind is known (the Ingress replica checks again with its own environment)."""
    known, host = serve_http_host()
    if not known:
        return
    try:
        keys = open_or_keys(config.auth, ServerSecrets().key_environ(config.auth))
    except AuthConfigError as exc:
        raise StartupError(f"zsc: {exc}") from None
    problem = exposure_problem(config.auth, keys, host)
    if problem:
        raise StartupError(problem)
