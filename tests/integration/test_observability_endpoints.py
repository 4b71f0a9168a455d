"""Metrics and statistics a real `batchserve serve` serves itself, without Prometheus: /metrics
on its own port too, the GPU families absent (not zero) without a GPU, and Triton's
statistics extension as tritonclient reads it."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from testing.server_process import ServerProcess
from tests.observability_helpers import repository as repository  # fixture
from tests.observability_helpers import server as server  # fixture: a server per test module

pytestmark = pytest.mark.integration


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
