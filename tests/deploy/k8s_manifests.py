"""deploy/k8s's manifests as the Kubernetes tests (tests/deploy/test_kubernetes_*.py) read
them: the overlays rendered, the KServe objects loaded, and the containers and pods KServe
and the Deployment would run."""

from __future__ import annotations

import copy
from typing import Any

from app.cli import build_parser
from tests.conftest import ROOT
from tests.deploy import dockerfile, kustomize
from tests.deploy.conftest import DOCKERFILE

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
INFERENCE_SERVICE = K8S / "kserve" / "inferenceservice.yaml"
SERVING_RUNTIME = K8S / "kserve" / "clusterservingruntime.yaml"
RUNTIME_SERVICES = [K8S / "kserve" / "digits.yaml", K8S / "kserve" / "digits-grpc.yaml"]
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
# KServe's ComponentExtensionSpec: predictor fields that are not part of the pod spec.
KSERVE_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
    "labels", "annotations", "deploymentStrategy", "autoScaling",
}  # fmt: skip
# KServe's ModelSpec fields that name the model; the rest are container fields merged over
# the runtime's kserve-container.
MODEL_SPEC_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "name"}
Manifest = dict[str, Any]


def rendered(overlay: str) -> list[Manifest]:
    return kustomize.render(K8S / "overlays" / overlay)


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def inference_service() -> Manifest:
    (manifest,) = kustomize.load_all(INFERENCE_SERVICE)
    return manifest


def serving_runtime() -> Manifest:
    (manifest,) = kustomize.load_all(SERVING_RUNTIME)
    return manifest


def runtime_services() -> list[Manifest]:
    return [m for path in RUNTIME_SERVICES for m in kustomize.load_all(path)]


def runtime_container(service: Manifest) -> dict[str, Any]:
    """The kserve-container KServe runs for `service`: the runtime's, with the container
    fields of the service's `model` laid over it."""
    (main,) = copy.deepcopy(serving_runtime()["spec"]["containers"])
    model = service["spec"]["predictor"]["model"]
    main.update({k: v for k, v in model.items() if k not in MODEL_SPEC_FIELDS})
    found: dict[str, Any] = main
    return found


def runtime_arguments(main: dict[str, Any]) -> dict[str, Any]:
    """The serve options the runtime's args set, as batchserve's own CLI parses them."""
    return vars(build_parser().parse_args(["serve", *main["args"]]))


def predictor_pod(service: Manifest) -> Manifest:
    """The InferenceService predictor's pod part, as the Pod KServe would create."""
    predictor = service["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod_spec}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def container(deployment: Manifest) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def image_user() -> int:
    user = dockerfile.parse(DOCKERFILE).stage("cpu").last("USER")
    assert user is not None
    return int(user.args.split(":")[0])
