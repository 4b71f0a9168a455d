"""deploy/k8s rendered and validated as an operator applies it: each overlay renders the whole
application, every built-in object validates strictly against every Kubernetes version from
1.29 to the newest kubernetes-validate ships, and every YAML file under deploy/k8s parses and
is covered by a kustomization or a check."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils
from packaging.version import Version

from tests.deploy import kustomize
from tests.deploy.k8s_manifests import (
    ADAPTER_VALUES,
    INFERENCE_SERVICE,
    K8S,
    OVERLAYS,
    RUNTIME_SERVICES,
    SERVING_RUNTIME,
    Manifest,
    container,
    inference_service,
    one,
    predictor_pod,
    rendered,
    runtime_container,
    runtime_services,
)

CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"),
}
OLDEST = Version("1.29")
VERSIONS = sorted(
    {v for v in kv_utils.all_versions() if Version(v) >= OLDEST}, key=Version
)  # 1.29 through the newest the installed kubernetes-validate ships


def test_versions_cover_1_29_to_the_newest_shipped() -> None:
    shipped = sorted(set(kv_utils.all_versions()), key=Version)
    assert VERSIONS[0] == "1.29.0" and VERSIONS[-1] == shipped[-1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_application(overlay: str) -> None:
    manifests = rendered(overlay)
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == sorted(
        [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
        ]
    )
    assert container(one(manifests, "Deployment"))["image"] == f"batchserve:{overlay}"


def all_builtin_objects() -> list[tuple[str, Manifest]]:
    """(where, object) for everything an operator applies that Kubernetes itself validates."""
    objects = [(f"overlays/{o}", m) for o in OVERLAYS for m in rendered(o)]
    objects += [("base", m) for m in kustomize.render(K8S / "base")]
    objects.append(("kserve predictor pod", predictor_pod(inference_service())))
    for service in runtime_services():
        pod = {"containers": [runtime_container(service)]}
        where = f"kserve runtime pod of {service['metadata']['name']}"
        objects.append((where, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                "spec": pod}))  # fmt: skip
    return [(w, m) for w, m in objects if (m["apiVersion"], m["kind"]) not in CUSTOM_KINDS]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_builtin_object_validates_strictly(version: str) -> None:
    errors = []
    for where, manifest in all_builtin_objects():
        name = f"{where}: {manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            errors.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")  # a typo in apiVersion or kind
    assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)


def test_strict_validation_catches_an_unknown_field() -> None:
    deployment = copy.deepcopy(one(rendered("cpu"), "Deployment"))
    container(deployment)["readinesProbe"] = container(deployment)["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_every_yaml_file_under_deploy_k8s_is_covered() -> None:
    """No manifest lies outside what the tests render or check by name."""
    covered = {INFERENCE_SERVICE, ADAPTER_VALUES, SERVING_RUNTIME, *RUNTIME_SERVICES}
    for kustomization in K8S.rglob("kustomization.yaml"):
        covered.add(kustomization)
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]:
            covered.add((kustomization.parent / entry).resolve())
    stray = [p for p in K8S.rglob("*.y*ml") if p.resolve() not in covered]
    assert not stray, f"not part of any kustomization nor checked: {stray}"


def test_files_parse_as_yaml() -> None:
    for path in K8S.rglob("*.y*ml"):
        assert list(yaml.safe_load_all(path.read_text())), path
    assert isinstance(yaml.safe_load(ADAPTER_VALUES.read_text())["prometheus"]["url"], str)
