"""deploy/k8s's custom resources, checked for what their operators require: the
ServiceMonitor (Prometheus operator), the InferenceService running our image as a custom v2
predictor, and the KServe ClusterServingRuntime with the InferenceServices that use it
through storageUri; the runtime is started as KServe starts it and answers their probes."""

from __future__ import annotations

import re

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testing.server_process import free_port
from tests.conftest import MODELS
from tests.deploy import kustomize
from tests.deploy.conftest import ImageCommand, ImageProcess, image_command
from tests.deploy.k8s_manifests import (
    K8S,
    Manifest,
    env_of,
    image_user,
    inference_service,
    runtime_arguments,
    runtime_container,
    runtime_services,
    serving_runtime,
)

# Storage schemes KServe's storage initializer downloads from.
STORAGE_SCHEMES = {"gs", "s3", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf"}
# KServe's HTTP port when an InferenceService declares none.
KSERVE_HTTP_PORT = 8080


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
