"""Every config validates: Serve's schema, our typed args, and KubeRay's CRD schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray import serve
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig, DeploymentScale
from serve_app.deployments.options import deployment_options
from serve_app.devtools.kube import (
    MANIFEST,
    render_manifest,
    render_rayservice,
    serve_config_v2,
)

ROOT = Path(__file__).resolve().parents[1]
# KubeRay's CRD, vendored with the commit it came from (k8s/schemas/README.md).
CRD = ROOT / "k8s" / "schemas" / "ray.io_rayservices.yaml"
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), ROOT / "deploy_config.yaml"])


def test_there_is_a_cpu_a_gpu_a_test_and_a_cluster_config() -> None:
    names = {p.name for p in CONFIGS}
    assert {
        "serve_config.yaml",
        "serve_config_gpu.yaml",
        "serve_config_test.yaml",
        "deploy_config.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_serve_and_app_args(path: Path) -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = schema.applications
    assert app.name == "zsc" and app.route_prefix == "/"
    assert app.import_path == "serve_app.app:build_app"
    AppConfig.model_validate(app.args)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_proxy_waits_longer_than_the_app(path: Path) -> None:
    # Serve's proxy answers its own timeout in plain text: zsc's JSON 504 must come first.
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app_timeout = AppConfig.model_validate(schema.applications[0].args).request_timeout_s
    proxy_timeout = schema.http_options.request_timeout_s
    assert app_timeout is not None and proxy_timeout is not None
    assert proxy_timeout > app_timeout


def test_gpu_config_shares_one_gpu_in_quarters_at_fp16() -> None:
    args = yaml.safe_load((ROOT / "configs/serve_config_gpu.yaml").read_text())["applications"][0][
        "args"
    ]
    config = AppConfig.model_validate(args)
    assert config.classifier.num_gpus == 0.25 and config.dtype == "float16"


def test_cluster_config_autoscales_and_limits() -> None:
    app = yaml.safe_load((ROOT / "deploy_config.yaml").read_text())["applications"][0]
    config = AppConfig.model_validate(app["args"])
    assert config.rate_limit.enabled
    scaling = config.classifier.autoscaling
    assert scaling is not None
    assert scaling.min_replicas < scaling.max_replicas and scaling.target_ongoing_requests > 0


def test_autoscaling_and_resources_become_serve_options() -> None:
    scale = DeploymentScale(
        num_cpus=0.5,
        resources={"zsc_worker": 1},
        autoscaling={"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 1},
    )
    options = deployment_options(scale, 0.5)
    assert "num_replicas" not in options  # Serve refuses it next to autoscaling_config
    assert options["ray_actor_options"]["resources"] == {"zsc_worker": 1}
    autoscaling = AutoscalingConfig(**options["autoscaling_config"])
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (1, 3)
    assert autoscaling.upscale_delay_s == 1
    # Serve's own option checks (no cluster needed) accept what we generate.
    Deployment = serve.deployment(lambda: None)  # noqa: N806
    Deployment.options(**options)


def test_autoscaling_and_a_fixed_replica_count_conflict() -> None:
    with pytest.raises(ValueError, match="conflicts with autoscaling"):
        DeploymentScale(num_replicas=3, autoscaling={"max_replicas": 4})
    # Given explicitly, even the default value conflicts: the operator meant one of the two.
    with pytest.raises(ValueError, match="conflicts with autoscaling"):
        DeploymentScale(num_replicas=1, autoscaling={"max_replicas": 4})
    assert DeploymentScale(autoscaling={"max_replicas": 4}).autoscaling is not None
    with pytest.raises(ValueError, match="max_replicas"):
        DeploymentScale(autoscaling={"min_replicas": 3, "max_replicas": 2})


def _rayservice() -> dict:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    return next(d for d in docs if d["kind"] == "RayService")


def test_rayservice_validates_against_the_kuberay_crd() -> None:
    assert CRD.is_file(), f"the KubeRay CRD schema is missing: expected {CRD}"
    crd = yaml.load(CRD.read_text(), Loader=yaml.CSafeLoader)  # 1 MB: the C loader is 5x faster
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    jsonschema.validate(_rayservice(), version["schema"]["openAPIV3Schema"])


def test_rayservice_has_head_cpu_and_gpu_groups() -> None:
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert {"cpu-workers", "gpu-workers"} <= set(groups)
    gpu = groups["gpu-workers"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cluster["rayVersion"] == "2.60.0"


def test_serve_config_v2_is_generated_from_deploy_config() -> None:
    assert _rayservice()["spec"]["serveConfigV2"] == serve_config_v2()
    assert _rayservice() == render_rayservice(ROOT / "deploy_config.yaml")
    assert yaml.safe_load(serve_config_v2()) == yaml.safe_load(
        (ROOT / "deploy_config.yaml").read_text()
    )
    assert MANIFEST.read_text() == render_manifest(), (
        "k8s/rayservice.yaml is stale: run `zsc k8s render`"
    )


def test_the_image_is_built_on_ray_2_60() -> None:
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in dockerfile


def test_readme_configuration_table_matches_the_code() -> None:
    from serve_app.devtools.config_docs import embed

    readme = (ROOT / "README.md").read_text()
    assert readme == embed(readme), (
        "README's config table is stale: regenerate it (README, Configuration)"
    )
