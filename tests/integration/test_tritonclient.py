"""Triton's own client (`tritonclient[http]`) against our server, as a Triton user would use it:
health, metadata, inference with binary tensors on and off, BYTES tensors, statistics."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from testing.synthetic_models import write_text_identity_model
from tests.conftest import DIGITS_ONNX, MODELS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton.InferenceServerClient]:
    root: Path = tmp_path_factory.mktemp("triton")
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    write_text_identity_model(root / "text" / "1" / "model.onnx")
    server = ServerProcess(root)
    yield triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    server.stop()


@pytest.fixture(scope="module")
def expected(digits_test_set: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])
    x = digits_test_set[0][:5]
    label, probabilities = session.run(None, {"input": x})
    return {"input": x, "label": label, "probabilities": probabilities}


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "batchserve"
    model = client.get_model_metadata("digits")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_with_binary_data_on_and_off(
    client: triton.InferenceServerClient,
    expected: dict[str, np.ndarray],
    binary_in: bool,
    binary_out: bool,
) -> None:
    x = expected["input"]
    request = triton.InferInput("input", list(x.shape), "FP32")
    request.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary_out),
        triton.InferRequestedOutput("probabilities", binary_data=binary_out),
    ]
    result = client.infer("digits", [request], outputs=outputs, request_id="abc")
    assert result.get_response()["id"] == "abc"
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.tobytes() == expected["probabilities"].tobytes()


def test_infer_without_outputs_returns_all_as_binary(
    client: triton.InferenceServerClient, expected: dict[str, np.ndarray]
) -> None:
    x = expected["input"]
    request = triton.InferInput("input", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    result = client.infer("digits", [request])
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    for output in result.get_response()["outputs"]:
        assert "binary_data_size" in output["parameters"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors_round_trip(client: triton.InferenceServerClient, binary: bool) -> None:
    words = np.array(["héllo", "", "batch me"], dtype=object)
    request = triton.InferInput("text", [3], "BYTES")
    request.set_data_from_numpy(words, binary_data=binary)
    output = triton.InferRequestedOutput("echo", binary_data=binary)
    result = client.infer("text", [request], outputs=[output])
    echoed = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("echo")]
    assert echoed == words.tolist()


def test_errors_surface_as_triton_exceptions(client: triton.InferenceServerClient) -> None:
    request = triton.InferInput("input", [1, 63], "FP32")
    request.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException, match=r"\[1, 63\] does not match"):
        client.infer("digits", [request])


def test_statistics(client: triton.InferenceServerClient) -> None:
    before = client.get_inference_statistics("digits")["model_stats"][0]
    request = triton.InferInput("input", [2, 64], "FP32")
    request.set_data_from_numpy(np.zeros((2, 64), np.float32))
    client.infer("digits", [request])
    stats = client.get_inference_statistics("digits")["model_stats"][0]
    assert stats["name"] == "digits"
    assert stats["inference_count"] == before["inference_count"] + 2
    assert stats["execution_count"] == before["execution_count"] + 1
