"""Metrics as the operator sees them: a real Prometheus (Debian's package, started here on
127.0.0.1 with deploy/prometheus's config and rules) scrapes a real `batchserve serve`; every
query of the Grafana dashboard and of the rules must return data, and the figures must match
the load the test sent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from load_tests.server_process import ServerProcess
from load_tests.synthetic_models import (
    write_heavy_model,
    write_token_model,
    write_word_tokenizer,
)
from tests.conftest import DIGITS_ONNX, MODELS, ROOT

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "batchserve.json"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    (PROMETHEUS is None or PROMTOOL is None) and not os.environ.get("CI"),  # CI must run them
    reason="Prometheus is not installed (.ci/run installs Debian's prometheus package)",
)
WAIT_S = 60.0
WORDS = ["alpha", "beta", "gamma", "delta"]
COMPARISON = re.compile(r"\s*(>|<|==|!=|>=|<=)\s*[0-9.]+\s*$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Call `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("observed")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "digits" / "1" / "model.onnx")
    # digits batched to a latency target, so the dashboard's latency-target panels have data.
    config = (MODELS / "digits" / "config.toml").read_text()
    assert "max_queue_delay_ms = 0" in config
    config = config.replace("max_queue_delay_ms = 0", "latency_target_ms = 1000")
    (root / "digits" / "config.toml").write_text(config)
    write_heavy_model(root / "heavy" / "1" / "model.onnx")
    (root / "heavy" / "config.toml").write_text(
        # One 8-sample request per batch, so a closed loop of 3 clients keeps it always busy.
        "max_batch_size = 8\n[batching]\nmax_queue_size = 2\n"
        '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 1\n'
    )
    # A text model, so the tokenizer stage's panel has data.
    write_token_model(root / "embed" / "1" / "model.onnx")
    write_word_tokenizer(root / "embed" / "tokenizer.json", WORDS)
    (root / "embed" / "config.toml").write_text(
        "max_batch_size = 8\n[padding]\ninputs = { input_ids = 0, attention_mask = 0 }\n"
        '[tokenizer]\ninput = "text"\nmax_length = 16\n'
        '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 1\n'
    )
    (root / "broken" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "broken" / "1" / "model.onnx")
    (root / "broken" / "config.toml").write_text("[batching]\nmax_queue_size = 0\n")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(repository, extra_args=["--metrics-port", "0"])
    yield process
    process.stop()


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


# -- utilization ------------------------------------------------------------------------


def busy_seconds(server: ServerProcess, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(m[1])
        for m in re.finditer(
            rf'^batchserve_worker_busy_seconds_total\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$',
            text,
            re.MULTILINE,
        )
    )


@pytest.fixture
def heavy_server(repository: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """The heavy model alone, on a server of its own, before Prometheus starts (this test
    must come first in the module), so nothing else competes for the two cores. Four times
    as deep as the module's: each batch computes ~30 ms, so the hand-offs between batches
    (a fraction of a millisecond, more while the client shares the cores) stay a few percent
    of the window."""
    shutil.copytree(repository / "heavy", tmp_path / "heavy")
    write_heavy_model(tmp_path / "heavy" / "1" / "model.onnx", blocks=64)
    process = ServerProcess(tmp_path)
    yield process
    process.stop()


def test_a_saturated_worker_reads_near_1_and_an_idle_one_near_0(
    heavy_server: ServerProcess,
) -> None:
    server = heavy_server

    async def saturate(seconds: float) -> tuple[float, float]:
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def client_loop() -> None:
                while time.monotonic() < stop:
                    r = await client.post("/v2/models/heavy/infer", json=heavy_body(8))
                    assert r.status_code in (200, 429)

            # Three clients: one request computing, two queued (the queue's limit), so the
            # single worker never waits; the window starts once the first batch has run.
            await client.post("/v2/models/heavy/infer", json=heavy_body(8))
            busy_before, started = busy_seconds(server, "heavy"), time.monotonic()
            await asyncio.gather(*(client_loop() for _ in range(3)))
            return busy_seconds(server, "heavy") - busy_before, time.monotonic() - started

    busy, wall = asyncio.run(saturate(3.0))
    assert busy / wall > 0.9, f"saturated worker busy {busy:.2f}s of {wall:.2f}s"

    idle_before, started = busy_seconds(server, "heavy"), time.monotonic()
    time.sleep(1.0)  # the measurement window of an idle worker, not a synchronisation
    idle = (busy_seconds(server, "heavy") - idle_before) / (time.monotonic() - started)
    assert idle < 0.05


# -- the load ---------------------------------------------------------------------------


def digits_body(rows: int, width: int = 64) -> dict[str, Any]:
    x = np.zeros((rows, width), np.float32)
    return {"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip


def heavy_body(rows: int) -> dict[str, Any]:
    x = np.random.default_rng(rows).random((rows, 16), dtype=np.float32)
    return {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32",
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


def test_metrics_are_also_served_on_their_own_port(server: ServerProcess) -> None:
    match = re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", server.log)
    assert match, server.log
    text = httpx.get(f"{match[1]}/metrics").text
    assert "batchserve_requests_total" in text
    assert "process_resident_memory_bytes" in text


def test_gpu_metrics_are_absent_not_zero_without_a_gpu(server: ServerProcess) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    try:
        import pynvml

        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        has_gpu = False
    assert ("batchserve_gpu_utilization_ratio" in text) == has_gpu


def test_triton_statistics_extension_works_with_tritonclient(server: ServerProcess) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    before = client.get_inference_statistics(model_name="digits")["model_stats"][0]
    x = np.zeros((3, 64), np.float32)
    request = triton.InferInput("input", [3, 64], "FP32")
    request.set_data_from_numpy(x, binary_data=False)
    result = client.infer(
        "digits", [request], outputs=[triton.InferRequestedOutput("label", binary_data=False)]
    )
    assert result.as_numpy("label").shape == (3,)
    after = client.get_inference_statistics(model_name="digits", model_version="1")
    stats = after["model_stats"][0]
    assert (stats["name"], stats["version"]) == ("digits", "1")
    assert stats["inference_count"] == before["inference_count"] + 3
    assert stats["execution_count"] == before["execution_count"] + 1
    success = stats["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 1
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert stats["inference_stats"]["compute_infer"]["ns"] > 0
    assert any(b["batch_size"] == 3 for b in stats["batch_stats"])
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"digits", "embed", "heavy"}
