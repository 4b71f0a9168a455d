"""On a real NVIDIA GPU: CUDA workers (I/O binding, CUDA graphs with padding to fixed batch
sizes, TensorRT where its libraries are installed) give the CPU's answers, and the server
reports the GPU in metadata, worker info and NVML metrics.

Skipped, saying why, where no session gets CUDAExecutionProvider (onnxruntime-gpu lists the
provider even on machines without a GPU, so a real session decides). load_tests/gpu/check.sh
runs these on the GPU host besides its measurements.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.repository.config import InstanceConfig, ModelConfig
from app.repository.instances import build_instances
from app.runtime import InstanceOptions, OnnxInstance
from app.runtime.providers import (
    CPU,
    CUDA,
    TENSORRT,
    missing_cuda_libraries,
    preload_cuda_libraries,
    visible_gpus,
)
from testing.server_process import ServerProcess
from testing.synthetic_models import write_heavy_model
from tests.conftest import DIGITS_ONNX


def why_no_cuda() -> str | None:
    """None where a session on cuda:0 really gets CUDA; else what is missing."""
    available = ort.get_available_providers()
    if CUDA not in available:
        return f"no CUDA here: this onnxruntime has no {CUDA} (its providers: {available})"
    preload_cuda_libraries()
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=[(CUDA, {}), CPU])
    if CUDA in session.get_providers():
        return None
    missing = missing_cuda_libraries()
    return (
        f"no GPU here: onnxruntime has {available}, but a session on cuda:0 got "
        f"{session.get_providers()} (missing: {', '.join(missing) or 'no library; no GPU'})"
    )


REASON = why_no_cuda()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.load(DIGITS_ONNX.parents[1] / "data" / "test_x.npy")


def on_cpu(x: np.ndarray) -> dict[str, np.ndarray]:
    return OnnxInstance(DIGITS_ONNX, "cpu", threads=1, index=0).run({"input": x})


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)


def test_a_cuda_worker_runs_on_the_gpu_through_io_binding_and_matches_the_cpu(
    rows: np.ndarray,
) -> None:
    bound = OnnxInstance(DIGITS_ONNX, "cuda:0", threads=1, index=0)
    plain = OnnxInstance(
        DIGITS_ONNX, "cuda:0", threads=1, index=0, options=InstanceOptions(io_binding=False)
    )

    assert bound.providers[0] == CUDA and bound._io_binding
    for n in (1, 7, 64, 3):
        x = rows[:n]
        assert_close(bound.run({"input": x}), on_cpu(x), atol=1e-4)
        assert_close(bound.run({"input": x}), plain.run({"input": x}), atol=1e-6)


def test_cuda_graphs_replay_the_fixed_sizes_with_padding(tmp_path: Path) -> None:
    # A graph of CUDA kernels only: ONNX Runtime refuses CUDA graphs when any node runs on
    # the CPU (digits' ai.onnx.ml Scaler does).
    path = tmp_path / "mlp.onnx"
    write_heavy_model(path, width=16, hidden=256, blocks=2)
    options = InstanceOptions(
        cuda_options={"enable_cuda_graph": "1", "use_tf32": "0"}, fixed_batch_sizes=(1, 4, 8)
    )
    instance = OnnxInstance(path, "cuda:0", threads=1, index=0, options=options)
    reference = OnnxInstance(path, "cpu", threads=1, index=0)
    instance.warm_up([8], batches=True)  # captures each size's graph
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)

    start = 0
    for n in (3, 1, 8, 2, 5, 4):
        rows = x[start : start + n]
        start += n
        assert instance.padded_size(n) in (1, 4, 8)
        got, want = instance.run({"x": rows}), reference.run({"x": rows})
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-5)


def test_cuda_star_puts_count_workers_on_every_visible_gpu(tmp_path: Path) -> None:
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, path)
    config = ModelConfig(instances=[InstanceConfig(device="cuda:*", count=2, threads=1)])

    instances = build_instances("m", 1, path, config)

    gpus = visible_gpus()
    assert gpus
    assert [i.label for i in instances] == [f"cuda:{g}/{k}" for g in gpus for k in (0, 1)]
    assert all(i.providers[0] == CUDA and i.fallback_reason is None for i in instances)


def test_tensorrt_fp16_matches_the_cpu_where_tensorrt_is_installed(rows: np.ndarray) -> None:
    if TENSORRT not in ort.get_available_providers() or missing_cuda_libraries(tensorrt=True):
        pytest.skip(f"TensorRT libraries missing: {missing_cuda_libraries(tensorrt=True)}")
    options = InstanceOptions(provider=TENSORRT, provider_options={"trt_fp16_enable": "true"})

    instance = OnnxInstance(DIGITS_ONNX, "cuda:0", threads=1, index=0, options=options)

    assert instance.providers[0] == TENSORRT
    assert_close(instance.run({"input": rows[:16]}), on_cpu(rows[:16]), atol=2e-2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("gpu")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "digits" / "1" / "model.onnx")
    (root / "digits" / "config.toml").write_text(
        'max_batch_size = 64\n[[instances]]\ndevice = "cuda:0"\nthreads = 1\n'
    )
    process = ServerProcess(root)
    yield process
    process.stop()


def test_the_server_serves_on_the_gpu_and_says_so(server: ServerProcess, rows: np.ndarray) -> None:
    assert "digits v1 [cuda:0/0 CUDAExecutionProvider+CPUExecutionProvider]" in server.log
    meta = httpx.get(f"{server.url}/v2/models/digits").json()
    assert meta["parameters"]["instances"][0]["providers"][0] == CUDA
    x = rows[:4]
    body = {"inputs": [{"name": "input", "shape": [4, 64], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["label"] == on_cpu(x)["label"].tolist()
    labels = {"model": "digits", "device": "cuda:0", "provider": CUDA, "requested": "cuda:0"}
    assert server.metric("batchserve_worker_info", **labels) == 1.0
    assert server.metric("batchserve_gpu_memory_total_bytes") > 0


def test_a_bare_model_is_tuned_on_the_gpu_and_served_on_every_gpu(tmp_path: Path) -> None:
    """A model.onnx alone, tuning on: measured on the first GPU, it serves `count` CUDA
    sessions on every visible GPU, with CPU-equal answers, and says so in its metadata."""
    write_heavy_model(tmp_path / "bare" / "1" / "model.onnx")
    env = {"BATCHSERVE_AUTOTUNE": "on", "BATCHSERVE_AUTOTUNE_SECONDS": "5",
           "BATCHSERVE_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    server = ServerProcess(tmp_path, env=env)
    try:
        meta = httpx.get(f"{server.url}/v2/models/bare").json()["parameters"]
        tuning = meta["tuning"]
        assert (tuning["source"], tuning["device"]) == ("tuned", "cuda"), tuning
        count = int(tuning["layout"].split("x")[0])
        devices = [w["device"] for w in meta["instances"]]
        assert devices == [f"cuda:{g}" for g in visible_gpus() for _ in range(count)], devices
        assert all(w["providers"][0] == CUDA for w in meta["instances"])
        x = np.random.default_rng(0).random((4, 16), dtype=np.float32)
        body = {"inputs": [{"name": "x", "shape": [4, 16], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        answer = httpx.post(f"{server.url}/v2/models/bare/infer", json=body).json()
        got = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(4, 16)
        want = OnnxInstance(tmp_path / "bare" / "1" / "model.onnx", "cpu", threads=1,
                            index=0).run({"x": x})["y"]  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    finally:
        server.stop()
