"""Shared by the gRPC tests (tests/integration/test_grpc_*.py): the model repository they
serve (Triton's simple models, digits, an FP16 model, a model of one id per sample, a model
that holds what it queues, a text model), the module-scoped server and a tritonclient.grpc
client fixture (each test module imports both, `as` themselves, and so starts a server of
its own), and the requests and references the tests share."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from testing.server_process import ServerProcess
from testing.synthetic_models import save_graph, write_token_model, write_word_tokenizer
from testing.triton_models import write_repository
from tests.conftest import DIGITS_ONNX, MODELS

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon"]
#: A model that holds what it queues: a batch waits a minute for 64 samples, 2 at most queue.
HELD = (
    "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 60000\npreferred_batch_sizes = [64]\n"
    "max_queue_size = 2\n"
)


def write_half_model(path: Path) -> None:
    """y FP16 [batch, 4] = 2 * x FP16 [batch, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])],
    )
    save_graph(graph, path)


def write_score_model(path: Path) -> None:
    """score FP32 [batch] = user INT64 [batch] / 2: one value per sample, as a recommender
    takes an id."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["user"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["as_float", "half"], ["score"]),
        ],
        "score",
        [helper.make_tensor_value_info("user", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    save_graph(graph, path)


def repository(root: Path) -> Path:
    write_repository(root)  # simple, simple_int8, simple_string, simple_identity
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    write_half_model(root / "half" / "1" / "model.onnx")
    write_score_model(root / "score" / "1" / "model.onnx")
    (root / "score" / "config.toml").write_text("max_batch_size = 8\n")
    (root / "held" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text(HELD)
    write_token_model(root / "embed" / "1" / "model.onnx")
    write_word_tokenizer(root / "embed" / "tokenizer.json", WORDS)
    (root / "embed" / "config.toml").write_text(
        'max_batch_size = 8\ndefault_outputs = ["pooled"]\n'
        "[padding]\ninputs = { input_ids = 0, attention_mask = 0 }\n"
        '[tokenizer]\ninput = "text"\nmax_length = 16\n'
    )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        repository(tmp_path_factory.mktemp("grpc")), grpc=True,
        env={"BATCHSERVE_MODEL_CONTROL": "true"},
    )  # fmt: skip
    yield process
    assert process.stop() == 0, process.log


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def digits_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": x})
    return {"label": label, "probabilities": probabilities}


def executions(server: ServerProcess, model: str) -> float:
    return server.metric("batchserve_executions_total", model=model)


def held_inputs() -> list[grpcclient.InferInput]:
    return [tensor("input", np.zeros((1, 64), np.float32), "FP32")]
