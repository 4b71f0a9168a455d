"""docker-compose.yml, checked without a Docker engine: it validates against the Compose
Specification's JSON schema (as shipped in check-jsonschema, the schema Docker Compose
itself validates with), mounts the very deploy/prometheus and deploy/grafana files the
observability tests run against a real Prometheus, and keeps its promises (a gpu profile
reserving NVIDIA devices, restart policies, health checks, volumes)."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy import dockerfile
from tests.deploy.conftest import DOCKERFILE, ImageProcess, image_command

COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
SERVER, GPU_SERVER = "batchserve", "batchserve-gpu"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` with nothing set in the environment."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def binds(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host path} of a service's bind mounts (short and long syntax)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        source = interpolate(source)
        if source.startswith("."):
            found[target] = source
    return found


def test_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    assert compose_schema()["title"] == "Compose Specification"
    errors = schema_errors(compose)
    assert not errors, "\n".join(errors)


def test_the_schema_check_can_fail(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"][SERVER]["healthchek"] = broken["services"][SERVER].pop("healthcheck")
    broken["services"]["prometheus"]["restart"] = ["always"]
    errors = schema_errors(broken)
    assert any("healthchek" in e for e in errors) and any("restart" in e for e in errors)


def test_mounts_the_monitoring_files_the_observability_tests_check(
    compose: dict[str, Any],
) -> None:
    """tests/integration/test_observability_prometheus.py runs deploy/prometheus's config and
    rules and every query of deploy/grafana's dashboard against a real Prometheus: compose must
    serve exactly those files, and they must fit the compose network."""
    prometheus = compose["services"]["prometheus"]
    mounted = binds(prometheus)
    config_dir = ROOT / mounted["/etc/prometheus"]
    assert config_dir.resolve() == (DEPLOY / "prometheus").resolve()
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_dir / Path(config_flag.split("=", 1)[1]).relative_to("/etc/prometheus")
    config = yaml.safe_load(config_path.read_text())
    for rules in config["rule_files"]:
        assert (config_dir / rules).is_file(), rules
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    port = dockerfile.parse(DOCKERFILE).stage("cpu").env({})["BATCHSERVE_PORT"]
    assert targets == [f"{SERVER}:{port}"], "Prometheus scrapes the compose server"
    tsdb = next(a for a in prometheus["command"] if a.startswith("--storage.tsdb.path="))
    named = [v for v in prometheus["volumes"] if isinstance(v, str) and not v.startswith(".")]
    assert any(v.split(":")[1] == tsdb.split("=", 1)[1] for v in named), "TSDB on a volume"
    assert named[0].split(":")[0] in compose["volumes"]

    grafana = compose["services"]["grafana"]
    mounted = binds(grafana)
    provisioning = ROOT / mounted["/etc/grafana/provisioning"]
    assert provisioning.resolve() == (DEPLOY / "grafana" / "provisioning").resolve()
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "batchserve.yml").read_text())
    dashboards_in_container = providers["providers"][0]["options"]["path"]
    dashboards = ROOT / mounted[dashboards_in_container]
    assert dashboards.resolve() == (DEPLOY / "grafana" / "dashboards").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(dashboards_in_container)).is_file()


def test_gpu_profile_reserves_nvidia_devices(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu = services[GPU_SERVER]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services[SERVER]["build"]["target"] == "cpu"
    always = [name for name, s in services.items() if "profiles" not in s]
    assert sorted(always) == sorted([SERVER, "prometheus", "grafana"]), "`docker compose up`"
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(set(map(interpolate, host_ports))) == len(host_ports), "host ports collide"


def test_each_server_publishes_the_image_s_http_and_grpc_ports(compose: dict[str, Any]) -> None:
    env = dockerfile.parse(DOCKERFILE).stage("cpu").env({})
    for name in (SERVER, GPU_SERVER):
        published = [p.rsplit(":", 1)[1] for p in compose["services"][name]["ports"]]
        assert published == [env["BATCHSERVE_PORT"], env["BATCHSERVE_GRPC_PORT"]], name


def test_every_service_restarts_and_has_a_health_check(compose: dict[str, Any]) -> None:
    stages = {s.name for s in dockerfile.parse(DOCKERFILE).stages}
    repository = dockerfile.parse(DOCKERFILE).stage("cpu").env({})["BATCHSERVE_MODEL_REPOSITORY"]
    for name, service in compose["services"].items():
        assert service["restart"] in ("always", "unless-stopped", "on-failure"), name
        assert service["healthcheck"]["test"][0] == "CMD", f"{name}: exec-form health check"
        if "build" in service:
            assert service["build"]["target"] in stages
            assert repository in binds(service), f"{name}: mount a model repository"
            drain = int(service.get("environment", {}).get("BATCHSERVE_DRAIN_TIMEOUT_S", 30))
            assert int(service["stop_grace_period"].removesuffix("s")) > drain


def test_server_health_check_passes_on_a_ready_server(
    compose: dict[str, Any], image_server: ImageProcess
) -> None:
    """The compose health check, run as the container would (its port mapped to the live
    server's), with the image's Python."""
    test = compose["services"][SERVER]["healthcheck"]["test"][1:]
    assert test[0] == "python"
    port = dockerfile.parse(DOCKERFILE).stage("cpu").env({})["BATCHSERVE_PORT"]
    argv = [a.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{image_server.port}/") for a in test]
    command = image_command()
    python = shutil.which(argv[0], path=command.env["PATH"])
    assert python is not None
    result = subprocess.run(
        [python, *argv[1:]],
        env=command.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{image_server.port}/v2/health/ready" in " ".join(argv)
