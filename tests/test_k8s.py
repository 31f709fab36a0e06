"""The Kubernetes manifests, offline: every object validates against its schema (KubeRay's CRD for
the RayService, Kubernetes' own API schemas from `kubernetes-validate` for the rest, both strict
about field names), and the cluster they describe is closed: token auth, a NetworkPolicy that
admits only Serve's port from outside the Ray pods, restricted pods on a read-only root
filesystem, Secrets for every credential, a drain before a worker stops, GCS fault tolerance,
and an image that pins the model the config serves."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from serve_app import __version__
from serve_app.devtools import kube

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRD = K8S / "schemas" / "ray.io_rayservices.yaml"
DOCKERFILE = K8S / "Dockerfile"
# The oldest Kubernetes still supported upstream when this was written; KubeRay 1.6 needs 1.25+.
K8S_VERSION = "1.32"
MANIFESTS = sorted(K8S.glob("*.yaml"))
RAY_CONTROL_PORTS = [
    6379,
    8265,
    10001,
    52365,
    8076,
    8077,
    8078,
]  # GCS, dashboard, client, agent, ...

RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
        for p in MANIFESTS
        for d in _documents(p)
    ]


def _one(kind: str, path: Path = kube.MANIFEST) -> dict[str, Any]:
    (doc,) = [d for d in _documents(path) if d["kind"] == kind]
    return doc


def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation (kubectl's
    default): an object schema that lists its properties admits no others."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_validator() -> jsonschema.protocols.Validator:
    # libyaml when PyYAML has it: the CRD is 18,000 lines. (tests/test_configs.py checks the
    # schema itself against the meta-schema, with the CRD as vendored.)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD.read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(v1["schema"]["openAPIV3Schema"])
    return jsonschema.validators.validator_for(schema)(schema)


def validate(doc: dict[str, Any]) -> None:
    """Raise if `doc` is not a valid object of its kind."""
    if doc["kind"] == "RayService":
        # The first error is enough, and fast; collecting all of them in a schema this size is not.
        error = next(_crd_validator().iter_errors(doc), None)
        if error is not None:
            raise error
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- every manifest validates, and a broken one does not -----------------------------------


def test_there_are_manifests_for_the_rayservice_its_policies_and_its_secrets() -> None:
    kinds = {d["kind"] for _, d in _all_documents()}
    assert {"RayService", "NetworkPolicy", "PodDisruptionBudget", "Secret"} <= kinds


@pytest.mark.parametrize(
    "doc", [d for _, d in _all_documents()], ids=[n for n, _ in _all_documents()]
)
def test_every_manifest_validates_against_its_schema(doc: dict[str, Any]) -> None:
    validate(doc)


@pytest.mark.parametrize("group", ["head", "cpu-workers", "gpu-workers"])
def test_the_ray_pod_templates_validate_as_kubernetes_pod_templates(group: str) -> None:
    """KubeRay's CRD embeds the pod template; Kubernetes' own schema checks it a second time."""
    template = _templates()[group]
    validate(
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": group},
            "template": template,
        }
    )


def _break(
    doc: dict[str, Any], path: list[Any], value: Any, rename: str | None = None
) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    parent = broken
    for step in path[:-1]:
        parent = parent[step]
    if rename is not None:
        parent[rename] = parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return broken


HEAD_CONTAINER = ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0]
BREAKS = [
    # (kind, path, new value or None, renamed key or None)
    ("RayService", ["spec", "rayClusterConfig", "authOptions", "mode"], "tokens", None),
    ("RayService", ["spec", "rayClusterConfig", "authOptions", "secretName"], None, "secret"),
    (
        "RayService",
        ["spec", "rayClusterConfig", "gcsFaultToleranceOptions", "redisAddress"],
        6379,
        None,
    ),
    (
        "RayService",
        [*HEAD_CONTAINER, "securityContext", "readOnlyRootFilesystem"],
        None,
        "readOnlyRootFileSystem",
    ),
    ("RayService", [*HEAD_CONTAINER, "securityContext", "runAsNonRoot"], "yes", None),
    ("NetworkPolicy", ["spec", "ingress", 0, "ports", 0, "port"], [8000], None),
    ("NetworkPolicy", ["spec", "podSelector"], None, "podSelectors"),
    ("PodDisruptionBudget", ["spec", "maxUnavailable"], {"pods": 1}, None),
    ("PodDisruptionBudget", ["spec", "selector"], None, "selectors"),
]


@pytest.mark.parametrize(("kind", "path", "value", "rename"), BREAKS, ids=lambda v: str(v))
def test_a_broken_manifest_fails_validation(
    kind: str, path: list[Any], value: Any, rename: str | None
) -> None:
    doc = _one(kind)
    validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(_break(doc, path, value, rename))


def test_a_broken_secret_fails_validation() -> None:
    secret = _documents(kube.SECRETS_TEMPLATE)[0]
    validate(secret)
    with pytest.raises(jsonschema.ValidationError):
        validate(_break(secret, ["stringData"], None, "stringdata"))
    with pytest.raises(jsonschema.ValidationError):
        validate(_break(secret, ["stringData"], {"auth_token": 42}))


# --- the manifests are generated, and stay in step ------------------------------------------


def test_the_manifests_are_what_the_generator_makes() -> None:
    for name, text in kube.render_files().items():
        assert (K8S / name).read_text() == text, f"k8s/{name} is stale: run `zsc k8s render`"


def test_render_check_fails_on_a_stale_manifest_or_secrets_template(tmp_path: Path) -> None:
    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "serve_app.devtools.kube",
                "render",
                "--check",
                "--out-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )

    for name in kube.render_files():
        shutil.copy(K8S / name, tmp_path / name)
    assert check().returncode == 0
    for name in kube.render_files():
        shutil.copy(K8S / name, tmp_path / name)
        (tmp_path / name).write_text((K8S / name).read_text() + "# a hand edit\n")
        result = check()
        assert result.returncode == 1 and f"{name} is stale" in result.stderr


def test_images_are_tagged_with_the_package_version() -> None:
    images = {c["image"] for t in _templates().values() for c in t["spec"]["containers"]}
    assert images == {f"zsc:{__version__}", f"zsc:{__version__}-gpu"}


# --- closed to strangers ---------------------------------------------------------------------


def _rayservice() -> dict[str, Any]:
    return _one("RayService")


def _templates() -> dict[str, dict[str, Any]]:
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return templates


def _secrets() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in _documents(kube.SECRETS_TEMPLATE)}


def test_ray_uses_token_auth_from_a_secret_with_the_key_kuberay_reads() -> None:
    auth = _rayservice()["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    # KubeRay reads the token from the data key auth_token of authOptions.secretName.
    assert "auth_token" in _secrets()[auth["secretName"]]


def test_every_secret_reference_names_a_secret_and_key_in_the_template() -> None:
    def refs(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            found = [node["secretKeyRef"]] if "secretKeyRef" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    secrets = _secrets()
    found = refs(_documents(kube.MANIFEST))
    assert len(found) >= 4
    for ref in found:
        assert ref["key"] in secrets.get(ref["name"], {}), (
            f"no Secret {ref['name']} with key {ref['key']}"
        )


def test_the_secrets_template_holds_placeholders_never_values() -> None:
    text = kube.SECRETS_TEMPLATE.read_text()
    for name, values in _secrets().items():
        for key, value in values.items():
            assert value == kube.PLACEHOLDER, f"{name}.{key} must be the placeholder"
    assert "REPLACE-ME" in text.splitlines()[0]


def test_every_ray_container_gets_credentials_from_secrets_and_runs_offline() -> None:
    for group, template in _templates().items():
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_HUB_OFFLINE"]["value"] == "1", group
        for variable in ("ZSC_API_KEYS", "ZSC_WEBHOOK_SECRET", "ZSC_JOBS_STORE"):
            assert "secretKeyRef" in env[variable]["valueFrom"], (group, variable)
            assert "value" not in env[variable], (group, variable)
        # Closed by default: no keys, no start. Only the webhook secret may be absent.
        assert not env["ZSC_API_KEYS"]["valueFrom"]["secretKeyRef"].get("optional", False)
        assert not env["ZSC_JOBS_STORE"]["valueFrom"]["secretKeyRef"].get("optional", False)


def test_pods_run_restricted_on_a_read_only_root_with_writable_volumes() -> None:
    autoscaler = _rayservice()["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert RESTRICTED.items() <= autoscaler["securityContext"].items()
    for group, template in _templates().items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, group
        assert spec["securityContext"]["runAsUser"] != 0, group
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            assert RESTRICTED.items() <= container["securityContext"].items(), group
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            # Ray writes its session under /tmp/ray; HF_HOME lives under ~/.cache.
            assert mounts.get("/tmp") in empty_dirs, group
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert any(env["HF_HOME"].startswith(p + "/") for p in mounts), group
        assert {m["name"] for m in autoscaler["volumeMounts"]} <= empty_dirs | {"tmp"}


def test_gcs_fault_tolerance_uses_the_operators_redis_with_a_password_from_a_secret() -> None:
    ft = _rayservice()["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert re.fullmatch(r"[\w.-]+:\d+", ft["redisAddress"])
    assert set(ft["redisPassword"]) == {"valueFrom"}
    assert "secretKeyRef" in ft["redisPassword"]["valueFrom"]


def test_workers_drain_before_they_stop_and_a_budget_limits_evictions() -> None:
    templates = _templates()
    for group in ("cpu-workers", "gpu-workers"):
        spec = templates[group]["spec"]
        (container,) = spec["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        # The drain ends inside the grace period, leaving Ray time to stop.
        assert 10 <= int(command[1]) < spec["terminationGracePeriodSeconds"]
    budget = _one("PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    selected = {
        g for g, t in templates.items() if _matches(budget["selector"], t["metadata"]["labels"])
    }
    assert selected == {"cpu-workers", "gpu-workers"}
    # The head serves no traffic, so a head restart drops no request.
    assert _rayservice()["spec"]["excludeHeadPodFromServeSvc"] is True


# --- what the NetworkPolicy admits, evaluated as Kubernetes does ------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "this evaluator knows matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _admits(
    policy: dict[str, Any],
    target: dict[str, str],
    source: dict[str, str],
    source_ns: dict[str, str],
    port: int,
) -> bool:
    """Would `policy` (in the target's namespace) let a pod labelled `source`, in a namespace
    labelled `source_ns`, open TCP `port` on a pod labelled `target`? Another namespace is
    marked by source_ns lacking the key `same`."""
    spec = policy["spec"]
    if not _matches(spec["podSelector"], target) or "Ingress" not in spec["policyTypes"]:
        return True  # the policy does not isolate this pod
    for rule in spec.get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(
            p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
        ):
            continue
        peers = rule.get("from")
        if peers is None:
            return True
        for peer in peers:
            ns_ok = (
                _matches(peer["namespaceSelector"], source_ns)
                if "namespaceSelector" in peer
                else "same" in source_ns
            )
            pod_ok = _matches(peer["podSelector"], source) if "podSelector" in peer else True
            if ns_ok and pod_ok:
                return True
    return False


def test_the_network_policy_admits_only_serve_from_outside_the_ray_pods() -> None:
    policy = _one("NetworkPolicy")
    templates = _templates()
    same_ns = {"same": "", "kubernetes.io/metadata.name": "zsc"}
    stranger = {"app": "something-else"}
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    monitoring = {"kubernetes.io/metadata.name": kube.MONITORING_NAMESPACE}
    other_ns = {"kubernetes.io/metadata.name": "operators"}
    for group, template in templates.items():
        target = template["metadata"]["labels"]
        assert _matches(policy["spec"]["podSelector"], target), f"{group} pods are not isolated"
        # Serve's port: from anywhere.
        assert _admits(policy, target, stranger, same_ns, kube.SERVE_PORT)
        assert _admits(policy, target, stranger, other_ns, kube.SERVE_PORT)
        for port in RAY_CONTROL_PORTS + [kube.METRICS_PORT]:
            # A stranger, in this namespace or another, reaches no Ray port but Serve's.
            assert not _admits(policy, target, stranger, same_ns, port), (group, port)
            assert not _admits(policy, target, stranger, other_ns, port), (group, port)
            # The Ray pods reach each other on every port (GCS, object transfer, workers).
            for source in templates.values():
                assert _admits(policy, target, source["metadata"]["labels"], same_ns, port)
        # The KubeRay operator, in its own namespace, reaches the dashboard only.
        assert _admits(policy, target, operator, other_ns, kube.DASHBOARD_PORT)
        for port in (6379, 10001, 52365):
            assert not _admits(policy, target, operator, other_ns, port)
        # Prometheus, from the monitoring namespace, reaches the metrics only.
        assert _admits(policy, target, stranger, monitoring, kube.METRICS_PORT)
        assert not _admits(policy, target, stranger, monitoring, kube.DASHBOARD_PORT)


def test_the_policy_evaluator_catches_a_policy_that_opens_the_dashboard() -> None:
    """The checks above can fail: a rule without ports opens every port to everyone."""
    policy = copy.deepcopy(_one("NetworkPolicy"))
    policy["spec"]["ingress"][0].pop("ports")
    target = _templates()["head"]["metadata"]["labels"]
    assert _admits(
        policy, target, {"app": "x"}, {"kubernetes.io/metadata.name": "x"}, kube.DASHBOARD_PORT
    )


# --- the image pins the model the config serves ------------------------------------------------


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", DOCKERFILE.read_text(), flags=re.M))


def test_the_image_bakes_the_configs_model_at_a_pinned_commit_and_runs_offline() -> None:
    args = _dockerfile_args()
    app = yaml.safe_load((ROOT / "deploy_config.yaml").read_text())["applications"][0]["args"]
    assert args["MODEL"] == app["model"]
    assert re.fullmatch(r"[0-9a-f]{40}", args["MODEL_REVISION"])
    assert args["MODEL_REVISION"] == app["revision"]
    text = DOCKERFILE.read_text()
    bake = text.index("serve_app.devtools.kube bake-model")
    assert text.index("ENV HF_HUB_OFFLINE=1") > bake  # offline once the model is in
    assert f"HF_HUB_CACHE={kube.HF_HUB_CACHE}" in text  # where the pods look for it
    assert "rayproject/ray:2.60.0" in text


def _bake_cli(model: str, revision: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "serve_app.devtools.kube", "bake-model", model, revision],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_bake_model_refuses_a_revision_that_is_not_a_commit() -> None:
    for revision in ("", "main", "v1.0", "B95119CE93D3E065DE6214E38CD4A97B0F2F2C6D"):
        with pytest.raises(ValueError, match="MODEL_REVISION must be the commit hash"):
            kube.bake_model("cross-encoder/nli-MiniLM2-L6-H768", revision)
    # The Dockerfile's build stops with that one line.
    result = _bake_cli("cross-encoder/nli-MiniLM2-L6-H768", "main")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("zsc k8s bake-model: MODEL_REVISION must be the commit hash")


def test_a_baked_commit_resolves_offline_and_another_does_not(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub cache layout the image holds: the pinned commit is found with the hub unreachable
    (conftest sets HF_HUB_OFFLINE=1); a commit the image lacks stops with one line."""
    from huggingface_hub import constants

    from serve_app.engine.source import ModelLoadError

    assert constants.HF_HUB_OFFLINE
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny-nli"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert Path(kube.bake_model("org/tiny-nli", commit)) == repo / "snapshots" / commit
    with pytest.raises(ModelLoadError, match="Cannot load the model 'org/tiny-nli'") as missing:
        kube.bake_model("org/tiny-nli", "f" * 40)
    assert "\n" not in str(missing.value)
