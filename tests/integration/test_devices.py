"""Devices and providers, served by a real `batchserve serve` process: models that ask for a
GPU or a provider this machine lacks fail their load saying what to install (the repository
index shows why), or with `fallback = "cpu"` serve on the CPU and say so in the log, the
model metadata, the startup line and /metrics (batchserve_worker_info).

On a machine where CUDA works, the cuda:0 models serve on the GPU instead, and the tests
check that; tests/gpu goes further there.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from testing.server_process import ServerProcess
from tests.conftest import DIGITS_ONNX

pytestmark = pytest.mark.integration

OPENVINO = "OpenVINOExecutionProvider"

MODELS = {
    "cpu": '[[instances]]\ndevice = "cpu"\nthreads = 1\n',
    "gpu": '[[instances]]\ndevice = "cuda:0"\nthreads = 1\n',
    "gpu_fallback": '[[instances]]\ndevice = "cuda:0"\ncount = 2\nthreads = 1\nfallback = "cpu"\n',
    "openvino": f'[[instances]]\nexecution_provider = "{OPENVINO}"\nthreads = 1\n',
    "openvino_fallback": (
        f'[[instances]]\nexecution_provider = "{OPENVINO}"\nthreads = 1\nfallback = "cpu"\n'
        'provider_options = { device_type = "GPU" }\n'
    ),
    "tensorrt": (
        '[[instances]]\ndevice = "cuda:0"\nexecution_provider = "TensorrtExecutionProvider"\n'
        "threads = 1\ntensorrt = { fp16 = true }\n"
    ),
    "unknown_provider": '[[instances]]\nexecution_provider = "TurboExecutionProvider"\n',
}


def cuda_works() -> bool:
    """Whether a session on cuda:0 really gets CUDA here (onnxruntime-gpu lists it anyway)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    session = ort.InferenceSession(
        str(DIGITS_ONNX), providers=[("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    )
    return "CUDAExecutionProvider" in session.get_providers()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("devices")
    for name, config in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(DIGITS_ONNX, root / name / "1" / "model.onnx")
        (root / name / "config.toml").write_text(config)
    process = ServerProcess(root)
    yield process
    process.stop()


def index(server: ServerProcess) -> dict[str, dict[str, Any]]:
    rows = httpx.post(f"{server.url}/v2/repository/index").json()
    return {row["name"]: row for row in rows}


def instances(server: ServerProcess, model: str) -> list[dict[str, Any]]:
    meta = httpx.get(f"{server.url}/v2/models/{model}").json()
    return list(meta["parameters"]["instances"])


def infer(server: ServerProcess, model: str, x: np.ndarray) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def test_cuda_0_without_a_gpu_fails_its_load_saying_what_is_missing(
    server: ServerProcess,
) -> None:
    row = index(server)["gpu"]
    if cuda_works():
        assert row["state"] == "READY"
        assert instances(server, "gpu")[0]["providers"][0] == "CUDAExecutionProvider"
        return
    assert row["state"] == "UNAVAILABLE"
    reason = row["reason"]
    assert "device cuda:0 asked for CUDAExecutionProvider but the session got" in reason
    assert "onnxruntime-gpu" in reason and "cuDNN 9" in reason
    assert 'fallback = "cpu"' in reason
    # The other models are unaffected.
    assert index(server)["cpu"]["state"] == "READY"


def test_fallback_to_the_cpu_serves_and_says_so_everywhere(
    server: ServerProcess, digits_test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    if cuda_works():
        pytest.skip("CUDA works here: cuda:0 does not fall back")
    assert index(server)["gpu_fallback"]["state"] == "READY"
    x, y = digits_test_set
    assert infer(server, "gpu_fallback", x[:8])["label"] == y[:8].tolist()

    workers = instances(server, "gpu_fallback")
    assert [(w["name"], w["device"], w["requested_device"]) for w in workers] == [
        ("cpu/0", "cpu", "cuda:0"),
        ("cpu/1", "cpu", "cuda:0"),
    ]
    assert all(w["providers"] == ["CPUExecutionProvider"] for w in workers)
    assert all(w["requested_provider"] == "CUDAExecutionProvider" for w in workers)
    assert all("asked for CUDAExecutionProvider" in w["fallback_reason"] for w in workers)

    warnings = [line for line in server.log.splitlines() if "WARNING" in line and "gpu_" in line]
    assert len(warnings) == 1, server.log
    assert (
        'model gpu_fallback v1: cpu/0, cpu/1 run on the CPU instead of cuda:0, as fallback = "cpu" '
        "allows: device cuda:0 asked for CUDAExecutionProvider but the session got"
    ) in warnings[0]
    assert "gpu_fallback v1 [cpu/0 CPUExecutionProvider (asked cuda:0)" in server.log

    for worker in ("cpu/0", "cpu/1"):
        assert (
            server.metric(
                "batchserve_worker_info",
                model="gpu_fallback",
                worker=worker,
                device="cpu",
                provider="CPUExecutionProvider",
                requested="cuda:0",
            )
            == 1.0
        )


def test_every_worker_reports_its_device_and_provider_in_metrics(server: ServerProcess) -> None:
    assert (
        server.metric(
            "batchserve_worker_info",
            model="cpu",
            version="1",
            worker="cpu/0",
            device="cpu",
            provider="CPUExecutionProvider",
            requested="cpu",
        )
        == 1.0
    )
    assert instances(server, "cpu")[0] == {
        "name": "cpu/0",
        "device": "cpu",
        "threads": 1,
        "providers": ["CPUExecutionProvider"],
        "requested_device": "cpu",
        "requested_provider": "CPUExecutionProvider",
    }
    # Models that failed have no workers to report.
    assert server.metric("batchserve_worker_info", model="unknown_provider") == 0.0


def test_a_provider_this_build_lacks_fails_naming_its_package_or_falls_back(
    server: ServerProcess,
) -> None:
    if OPENVINO in ort.get_available_providers():
        pytest.skip("this onnxruntime has OpenVINO")
    rows = index(server)
    assert rows["openvino"]["state"] == "UNAVAILABLE"
    assert (
        f"device cpu asked for {OPENVINO}, which this onnxruntime build"
        in (rows["openvino"]["reason"])
    )
    assert "comes with onnxruntime-openvino" in rows["openvino"]["reason"]

    assert rows["openvino_fallback"]["state"] == "READY"
    (worker,) = instances(server, "openvino_fallback")
    assert (worker["device"], worker["requested_provider"]) == ("cpu", OPENVINO)
    assert "onnxruntime-openvino" in worker["fallback_reason"]
    assert f"openvino_fallback v1 [cpu/0 CPUExecutionProvider (asked {OPENVINO})]" in server.log


def test_tensorrt_without_its_libraries_fails_naming_them(server: ServerProcess) -> None:
    row = index(server)["tensorrt"]
    if row["state"] == "READY":
        assert instances(server, "tensorrt")[0]["providers"][0] == "TensorrtExecutionProvider"
        return
    assert "asked for TensorrtExecutionProvider" in row["reason"]
    assert "libnvinfer" in row["reason"]


def test_an_unknown_provider_is_a_config_error_listing_the_known_ones(
    server: ServerProcess,
) -> None:
    row = index(server)["unknown_provider"]
    assert row["state"] == "UNAVAILABLE"
    assert "unknown_provider/config.toml: instances.0.execution_provider" in row["reason"]
    assert "unknown execution provider" in row["reason"]
    assert "OpenVINOExecutionProvider" in row["reason"]
    assert "(got 'TurboExecutionProvider')" in row["reason"]
