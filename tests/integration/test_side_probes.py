"""The probes on --metrics-port of a real server: live and ready as the main port says them,
readiness 503 from the moment a drain begins while liveness stays 200, and /metrics beside."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from testing.server_process import ServerProcess, free_port

pytestmark = pytest.mark.integration

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_probes_on_the_metrics_port_follow_the_server_through_a_drain(tmp_path: Path) -> None:
    shutil.copytree(MODELS / "digits", tmp_path / "digits", ignore=shutil.ignore_patterns("*.py"))
    side_port = free_port()
    server = ServerProcess(
        tmp_path,
        env={"BATCHSERVE_METRICS_PORT": str(side_port), "BATCHSERVE_DRAIN_TIMEOUT_S": "20"},
    )
    side = f"http://127.0.0.1:{side_port}"
    try:
        assert httpx.get(f"{side}/v2/health/live").json() == {"live": True}
        assert httpx.get(f"{side}/v2/health/ready").json() == {"ready": True}
        assert "batchserve_queue_depth" in httpx.get(f"{side}/metrics").text
        assert f"metrics on http://127.0.0.1:{side_port}/metrics, with the health" in server.log

        # A request whose body is still arriving holds the drain open until it is sent.
        host, port = server.url.removeprefix("http://").split(":")
        body = b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[' + (
            b",".join(b"0" for _ in range(64)) + b"]}]}"
        )
        held = socket.create_connection((host, int(port)), timeout=30)
        held.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200  # it was read
        server.signal_term()
        ready = _until_not_ready(f"{side}/v2/health/ready")
        assert ready.json() == {"error": "server is shutting down"}
        assert httpx.get(f"{side}/v2/health/live").json() == {"live": True}
        held.sendall(body[10:])
        answer = held.recv(65536)
        assert answer.startswith(b"HTTP/1.1 "), answer
        held.close()
        assert server.wait(timeout=30) == 0, server.log
    finally:
        server.stop()


def _until_not_ready(url: str) -> httpx.Response:
    """Probe every 20 ms: the drain publishes readiness on the loop, just after SIGTERM."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=5)
        if response.status_code != 200:
            return response
        threading.Event().wait(0.02)
    raise AssertionError("readiness on the metrics port stayed 200 for 5 s after SIGTERM")
