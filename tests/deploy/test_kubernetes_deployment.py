"""deploy/k8s's Deployment and the objects around it, checked against each other and against
a live server: probes hit real endpoints, the grace period covers the drain, the pod runs
locked down as the image's user, the Service, PodDisruptionBudget, HPA and ServiceMonitor
select and name what the Deployment runs, and the HPA's metric is one the adapter publishes
from a series the server really exports."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import yaml

from app.settings import Settings
from tests.deploy.conftest import ImageProcess
from tests.deploy.k8s_manifests import (
    ADAPTER_VALUES,
    OVERLAYS,
    container,
    env_of,
    image_user,
    inference_service,
    one,
    rendered,
)


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
    # On the side listener: answered from its own threads while the API port is saturated;
    # liveness there still fails when the event loop stalls (tests/unit/test_side_listener).
    assert all(p["port"] in ("metrics", ports["metrics"]) for p in probes.values())

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


def probes() -> set[tuple[bool, str]]:
    """(on the metrics port?, path) of every probe the manifests declare."""
    found = set()
    containers = [container(one(rendered(o), "Deployment")) for o in OVERLAYS]
    containers += inference_service()["spec"]["predictor"]["containers"]
    for c in containers:
        metrics = {"metrics"} | {p["containerPort"] for p in c["ports"] if p["name"] == "metrics"}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in c:
                found.add((c[kind]["httpGet"]["port"] in metrics, c[kind]["httpGet"]["path"]))
    return found


def test_every_probe_path_answers_200_on_a_ready_server(image_server: ImageProcess) -> None:
    for on_metrics_port, path in probes():
        url = (image_server.side_url if on_metrics_port else image_server.url) + path
        response = httpx.get(url)
        assert response.status_code == 200, f"{url}: {response.status_code}"


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
