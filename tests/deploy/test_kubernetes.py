"""deploy/k8s as an operator applies it: each overlay rendered (tests/deploy/kustomize.py),
every built-in object validated strictly against every Kubernetes version from 1.29 to the
newest kubernetes-validate ships, the custom resources checked for what their operators
require, and the pieces checked against each other and against a live server: probes hit
real endpoints, the grace period covers the drain, the HPA's metric is one the adapter
publishes from a series the server really exports. The KServe serving runtime is started as
KServe starts it and answers the probes of the InferenceServices that use it."""

from __future__ import annotations

import copy
import re
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes_validate import utils as kv_utils
from packaging.version import Version

from app.cli import build_parser
from app.settings import Settings
from load_tests.server_process import free_port
from tests.conftest import MODELS, ROOT
from tests.deploy import dockerfile, kustomize
from tests.deploy.conftest import DOCKERFILE, ImageCommand, ImageProcess, image_command

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
INFERENCE_SERVICE = K8S / "kserve" / "inferenceservice.yaml"
SERVING_RUNTIME = K8S / "kserve" / "clusterservingruntime.yaml"
RUNTIME_SERVICES = [K8S / "kserve" / "digits.yaml", K8S / "kserve" / "digits-grpc.yaml"]
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"),
}
OLDEST = Version("1.29")
VERSIONS = sorted(
    {v for v in kv_utils.all_versions() if Version(v) >= OLDEST}, key=Version
)  # 1.29 through the newest the installed kubernetes-validate ships
# KServe's ComponentExtensionSpec: predictor fields that are not part of the pod spec.
KSERVE_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
    "labels", "annotations", "deploymentStrategy", "autoScaling",
}  # fmt: skip
# KServe's ModelSpec fields that name the model; the rest are container fields merged over
# the runtime's kserve-container.
MODEL_SPEC_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "name"}
# Storage schemes KServe's storage initializer downloads from.
STORAGE_SCHEMES = {"gs", "s3", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf"}
# KServe's HTTP port when an InferenceService declares none.
KSERVE_HTTP_PORT = 8080
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


# -- rendering and schema validation --------------------------------------------------------


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


# -- the Deployment -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_drain_and_security(overlay: str) -> None:
    deployment = one(rendered(overlay), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    env = env_of(main)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["http"] == int(env["BATCHSERVE_PORT"])
    assert ports["metrics"] == int(env["BATCHSERVE_METRICS_PORT"])
    assert ports["grpc"] == int(env["BATCHSERVE_GRPC_PORT"])

    probes = {
        kind: main[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["startupProbe"]["path"] == "/v2/health/ready"
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert all(p["port"] in ("http", ports["http"]) for p in probes.values())

    drain_s = int(
        env.get("BATCHSERVE_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default)
    )
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain_s

    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_user()
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(main["resources"][bound]), f"{bound} incomplete"


def test_only_the_gpu_overlay_asks_for_a_gpu() -> None:
    gpu = container(one(rendered("gpu"), "Deployment"))["resources"]["limits"]
    cpu = container(one(rendered("cpu"), "Deployment"))["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in cpu
    tolerations = one(rendered("gpu"), "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def probe_paths() -> set[str]:
    paths = set()
    containers = [container(one(rendered(o), "Deployment")) for o in OVERLAYS]
    containers += inference_service()["spec"]["predictor"]["containers"]
    for c in containers:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in c:
                paths.add(c[kind]["httpGet"]["path"])
    return paths


def test_every_probe_path_answers_200_on_a_ready_server(image_server: ImageProcess) -> None:
    for path in probe_paths():
        response = httpx.get(f"{image_server.url}{path}")
        assert response.status_code == 200, f"{path}: {response.status_code}"


# -- Service, PDB, HPA, ServiceMonitor agree --------------------------------------------


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_point_at_each_other(overlay: str) -> None:
    manifests = rendered(overlay)
    deployment, service = one(manifests, "Deployment"), one(manifests, "Service")
    hpa, pdb = one(manifests, "HorizontalPodAutoscaler"), one(manifests, "PodDisruptionBudget")
    monitor = one(manifests, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    container_ports = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"]
    )  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot drain without an outage"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    budget = pdb["spec"]
    # The schema has no enums: check the values the API accepts.
    assert budget.get("unhealthyPodEvictionPolicy", "IfHealthyBudget") in (
        "IfHealthyBudget", "AlwaysAllow"
    )  # fmt: skip
    assert (
        budget.get("maxUnavailable", 0) >= 1 or budget["minAvailable"] < hpa["spec"]["minReplicas"]
    )

    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports, "a ServiceMonitor names a Service port"
        assert service_ports[endpoint["port"]]["targetPort"] == "metrics"
        assert endpoint.get("path", "/metrics") == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint.get(key, "30s")), endpoint


def test_the_cpu_hpa_scales_on_cpu_and_in_flight_requests() -> None:
    metrics = one(rendered("cpu"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Pods", "Resource"}
    resource = next(m["resource"] for m in metrics if m["type"] == "Resource")
    assert resource["name"] == "cpu" and resource["target"]["type"] == "Utilization"
    gpu_metrics = one(rendered("gpu"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in gpu_metrics] == ["Pods"]


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


def published_name(rule: dict[str, Any], series: str) -> str | None:
    """The name prometheus-adapter gives `series` under `rule` (None if it does not match)."""
    name = rule.get("name", {})
    pattern = name.get("matches", "^(.*)$")
    if not re.search(pattern, series):
        return None
    return re.sub(pattern, name.get("as", r"\g<0>").replace("$", "\\"), series)


def test_hpa_custom_metric_is_published_from_a_series_the_server_exports(
    image_server: ImageProcess,
) -> None:
    exported = set(
        re.findall(
            r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", httpx.get(f"{image_server.url}/metrics").text, re.M
        )
    )
    published = {}
    for rule in adapter_rules():
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'\""))
        assert series, rule["seriesQuery"]
        assert series[0] in exported, f"{series[0]} is not exported by batchserve"
        overrides = rule["resources"]["overrides"]
        assert (
            overrides["pod"]["resource"] == "pod"
            and overrides["namespace"]["resource"] == "namespace"
        )
        for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert template in rule["metricsQuery"], f"metricsQuery lacks {template}"
        name = published_name(rule, series[0])
        assert name is not None, f"{rule['name']} does not match {series[0]}"
        published[name] = series[0]
    for overlay in OVERLAYS:
        for metric in one(rendered(overlay), "HorizontalPodAutoscaler")["spec"]["metrics"]:
            if metric["type"] == "Pods":
                name = metric["pods"]["metric"]["name"]
                assert name in published, f"{overlay}: no adapter rule publishes {name}"
                assert metric["pods"]["target"]["type"] == "AverageValue"


# -- custom resources -----------------------------------------------------------------------


def test_servicemonitor_has_what_the_prometheus_operator_needs() -> None:
    (monitor,) = kustomize.load_all(K8S / "base" / "servicemonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    )
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", monitor["metadata"]["name"])
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"] and spec["endpoints"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}


def test_inference_service_runs_our_image_as_a_v2_custom_predictor() -> None:
    service = inference_service()
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    assert len(service["metadata"]["name"]) <= 45  # KServe's limit for generated names
    assert set(service["spec"]) == {"predictor"}
    predictor = service["spec"]["predictor"]
    frameworks = {"sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "model"}
    assert not frameworks & set(predictor), "a custom container, not a framework predictor"
    (main,) = predictor["containers"]
    assert main["name"] == "kserve-container", "KServe finds the predictor by this name"
    env = env_of(main)
    assert env["PROTOCOL"] == "v2", "KServe reads a custom predictor's protocol from PROTOCOL"
    (port,) = main["ports"]  # KServe routes to the one port a predictor declares
    assert port["containerPort"] == int(env.get("BATCHSERVE_PORT", "8000"))
    assert port.get("name", "http1") in ("http1", "h2c"), "Knative's port names"
    assert re.fullmatch(r"batchserve:(cpu|gpu)", main["image"])
    for kind in ("readinessProbe", "livenessProbe"):
        assert main[kind]["httpGet"]["port"] == port["containerPort"]
    assert main["securityContext"]["runAsUser"] == image_user()
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in ("cpu", "memory", "concurrency", "rps")
    annotations = service["metadata"].get("annotations", {})
    if annotations.get("serving.kserve.io/enable-prometheus-scraping") == "true":
        assert annotations["prometheus.kserve.io/port"] == str(port["containerPort"])


def test_files_parse_as_yaml() -> None:
    for path in K8S.rglob("*.y*ml"):
        assert list(yaml.safe_load_all(path.read_text())), path
    assert isinstance(yaml.safe_load(ADAPTER_VALUES.read_text())["prometheus"]["url"], str)


# -- the KServe serving runtime -------------------------------------------------------------


def test_serving_runtime_serves_onnx_over_v2_and_grpc_v2_from_mnt_models() -> None:
    runtime = serving_runtime()
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1", "ClusterServingRuntime"
    )  # fmt: skip
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", runtime["metadata"]["name"])
    spec = runtime["spec"]
    known = {"supportedModelFormats", "protocolVersions", "containers", "annotations",
             "labels", "multiModel", "disabled", "volumes", "nodeSelector", "tolerations",
             "affinity", "imagePullSecrets", "priorityClassName"}  # fmt: skip
    assert set(spec) <= known, set(spec) - known
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["onnx"]["autoSelect"] is True, "an onnx InferenceService gets batchserve"
    assert formats["onnx"].get("priority", 1) >= 1
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    (main,) = spec["containers"]
    assert main["name"] == "kserve-container"
    assert re.fullmatch(r"batchserve:(cpu|gpu)", main["image"])
    assert "command" not in main, "args go after the image's ENTRYPOINT (batchserve serve)"
    options = runtime_arguments(main)
    assert options["model_repository"] == "/mnt/models", "where KServe puts storageUri"
    assert options["port"] == KSERVE_HTTP_PORT
    assert options["grpc_port"] and options["grpc_port"] != options["port"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(options["metrics_port"])
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert main["securityContext"]["runAsUser"] == image_user()
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(main["resources"][bound]), f"{bound} incomplete"


@pytest.mark.parametrize("service", runtime_services(), ids=lambda s: s["metadata"]["name"])
def test_inference_service_uses_the_runtime_through_storage_uri(service: Manifest) -> None:
    runtime = serving_runtime()
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1", "InferenceService"
    )  # fmt: skip
    assert len(service["metadata"]["name"]) <= 45
    predictor = service["spec"]["predictor"]
    assert "containers" not in predictor, "the runtime brings the container"
    model = predictor["model"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].split("://")[0] in STORAGE_SCHEMES, model["storageUri"]
    options = runtime_arguments(runtime_container(service))
    probe = model["readinessProbe"]
    if model["protocolVersion"] == "grpc-v2":
        (port,) = model["ports"]  # serverless KServe routes the one port declared
        assert port["name"] == "h2c", "Knative's name for cleartext HTTP/2"
        assert port["containerPort"] == options["grpc_port"]
        assert probe["grpc"]["port"] == port["containerPort"], "a probe targets the routed port"
    else:
        assert "ports" not in model and options["port"] == KSERVE_HTTP_PORT
        assert probe["httpGet"] == {"path": "/v2/health/ready", "port": KSERVE_HTTP_PORT}
    assert predictor["minReplicas"] <= predictor["maxReplicas"]


def test_the_runtime_started_as_kserve_starts_it_answers_every_probe() -> None:
    """The image's ENTRYPOINT with the runtime's args (/mnt/models and its ports mapped to
    this machine): each InferenceService's readiness probe passes, and /metrics answers on
    the port the Prometheus annotation names."""
    (main,) = serving_runtime()["spec"]["containers"]
    base = image_command()
    ports = {"port": 0, "grpc_port": free_port(), "metrics_port": free_port()}
    mapped = [f"--model-repository={MODELS}"] + [
        f"--{name.replace('_', '-')}={port}" for name, port in ports.items()
    ]
    assert {a.split("=")[0] for a in main["args"]} == {a.split("=")[0] for a in mapped}
    process = ImageProcess(ImageCommand([*base.argv, *mapped], base.env, base.image_env))
    try:
        assert process.grpc_target.endswith(f":{ports['grpc_port']}")
        for service in runtime_services():
            probe = service["spec"]["predictor"]["model"]["readinessProbe"]
            if "grpc" in probe:
                with grpc.insecure_channel(process.grpc_target) as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                        timeout=10,
                    )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            else:
                response = httpx.get(f"{process.url}{probe['httpGet']['path']}")
                assert response.status_code == 200, response.text
        metrics = httpx.get(f"http://127.0.0.1:{ports['metrics_port']}/metrics")
        assert metrics.status_code == 200 and "batchserve_requests_total" in metrics.text
    finally:
        assert process.stop() == 0, process.log
