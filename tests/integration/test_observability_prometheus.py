"""Metrics as the operator sees them: a real Prometheus (Debian's package, started here on
127.0.0.1 with deploy/prometheus's config and rules) scrapes a real `batchserve serve`; promtool
accepts the config and rules, every query of the Grafana dashboard and of the rules must
return data, and the figures must match the load the test sent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from testing.server_process import ServerProcess
from tests.observability_helpers import DEPLOY, WORDS, heavy_body, poll
from tests.observability_helpers import repository as repository  # fixture
from tests.observability_helpers import server as server  # fixture: a server per test module

pytestmark = pytest.mark.integration

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "batchserve.json"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    (PROMETHEUS is None or PROMTOOL is None) and not os.environ.get("CI"),  # CI must run them
    reason="Prometheus is not installed (.ci/run installs Debian's prometheus package)",
)
COMPARISON = re.compile(r"\s*(>|<|==|!=|>=|<=)\s*[0-9.]+\s*$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS is not None, "install Prometheus: apt-get install prometheus"
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    target = server.url.removeprefix("http://")
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(ready, "Prometheus to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body.get("status") == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prometheus: str, expr: str) -> float:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else float("nan")


# -- the load ---------------------------------------------------------------------------


def digits_body(rows: int, width: int = 64) -> dict[str, Any]:
    x = np.zeros((rows, width), np.float32)
    return {"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip


@pytest.fixture(scope="module")
def load(server: ServerProcess) -> dict[str, Any]:
    """A known load: successes with known sample counts, invalid requests, and requests the
    heavy model's 2-deep queue refuses. Returns what the client saw."""

    async def send() -> dict[str, Any]:
        statuses: Counter[tuple[str, int]] = Counter()
        samples = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            sizes = [1 + i % 7 for i in range(60)]
            responses = await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=digits_body(n)) for n in sizes)
            )
            for n, r in zip(sizes, responses, strict=True):
                statuses["digits", r.status_code] += 1
                samples += n if r.status_code == 200 else 0
            for _ in range(5):  # wrong shape: invalid
                r = await client.post("/v2/models/digits/infer", json=digits_body(1, width=63))
                statuses["digits", r.status_code] += 1
            for words in range(1, 6):  # raw text, through the tokenizer stage
                text = {"name": "text", "shape": [1], "datatype": "BYTES",
                        "data": [" ".join(WORDS[:words])]}  # fmt: skip
                r = await client.post("/v2/models/embed/infer", json={"inputs": [text]})
                statuses["embed", r.status_code] += 1
                samples += 1 if r.status_code == 200 else 0
            burst = await asyncio.gather(
                *(client.post("/v2/models/heavy/infer", json=heavy_body(8)) for _ in range(12))
            )
            for r in burst:
                statuses["heavy", r.status_code] += 1
                samples += 8 if r.status_code == 200 else 0
        return {"statuses": statuses, "samples": samples}

    sent = asyncio.run(send())
    assert sent["statuses"]["digits", 200] == 60
    assert sent["statuses"]["digits", 400] == 5
    assert sent["statuses"]["embed", 200] == 5
    assert sent["statuses"]["heavy", 429] > 0, sent  # the burst overflowed the heavy queue
    return sent


# -- tests ------------------------------------------------------------------------------


@needs_prometheus
def test_promtool_accepts_the_config_and_rules() -> None:
    assert PROMTOOL is not None
    config = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target and variable, Grafana variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert match, f"variable {variable['name']}: unexpected query {variable['definition']}"
        found.append((f"variable {variable['name']}", f"count by ({match[2]}) ({match[1]})"))
    substitutions = {"$model": ".*", "$__rate_interval": "30s", "$__range": "5m"}
    resolved = []
    for title, expr in found:
        for name, value in substitutions.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"
        resolved.append((title, expr))
    return resolved


def rule_queries() -> list[tuple[str, str]]:
    """(rule name, PromQL) for every recording rule and every alert's series (the part
    before its threshold comparison: an alert that is not firing returns nothing)."""
    found = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                expr = rule["expr"].strip()
                if "alert" in rule:
                    assert COMPARISON.search(expr), f"{rule['alert']}: no trailing threshold"
                    expr = COMPARISON.sub("", expr)
                found.append((rule.get("record") or rule["alert"], expr))
    return found


def gpu_absent(server: ServerProcess) -> bool:
    return "batchserve_gpu_" not in httpx.get(f"{server.url}/metrics").text


@needs_prometheus
def test_every_dashboard_and_rule_query_returns_data(
    server: ServerProcess, prometheus: str, load: dict[str, Any]
) -> None:
    expected = sum(n for (_, status), n in load["statuses"].items() if status == 200)
    poll(
        lambda: scalar(prometheus, 'sum(batchserve_requests_total{outcome="success"})') == expected,
        "Prometheus to scrape every success",
    )
    # Recording rules run every second; wait until the ones alerts depend on exist.
    poll(
        lambda: (
            query(prometheus, "model_version:batchserve_errors:ratio1m")
            and query(prometheus, "model_version:batchserve_request_duration_seconds:p99_1m")
        ),
        "the recording rules to be evaluated",
    )
    empty = []
    for name, expr in dashboard_queries() + rule_queries():
        if "batchserve_gpu_" in expr and gpu_absent(server):
            continue  # no GPU here: the GPU families are absent by design, not zero
        if not query(prometheus, expr):
            empty.append(f"{name}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    rules = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    unhealthy = [r["name"] for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, f"rules failing to evaluate: {unhealthy}"


@needs_prometheus
def test_counts_in_prometheus_match_the_load_sent(
    server: ServerProcess, prometheus: str, load: dict[str, Any]
) -> None:
    statuses = load["statuses"]
    successes = sum(n for (_, status), n in statuses.items() if status == 200)

    def settled() -> bool:
        return (
            scalar(prometheus, 'sum(batchserve_requests_total{outcome="success"})') == (successes)
            and scalar(prometheus, "sum(batchserve_inferences_total)") == load["samples"]
        )

    poll(settled, "the success and sample counts to reach Prometheus")
    by_outcome = {
        (r["metric"]["model"], r["metric"]["outcome"]): float(r["value"][1])
        for r in query(prometheus, "sum by (model, outcome) (batchserve_requests_total)")
    }
    assert by_outcome["digits", "success"] == statuses["digits", 200]
    assert by_outcome["digits", "invalid"] == statuses["digits", 400]
    assert by_outcome["heavy", "success"] == statuses["heavy", 200]
    assert by_outcome["heavy", "rejected"] == statuses["heavy", 429]
    executions = scalar(prometheus, "sum(batchserve_executions_total)")
    assert scalar(prometheus, "sum(batchserve_batch_size_count)") == executions
    assert executions < successes  # the concurrent digits requests were batched
    utilization = query(prometheus, "rate(batchserve_worker_busy_seconds_total[30s])")
    assert utilization
    assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in utilization)
    failed = query(prometheus, 'batchserve_model_state{model="broken", state="failed"}')
    assert [float(r["value"][1]) for r in failed] == [1.0]
