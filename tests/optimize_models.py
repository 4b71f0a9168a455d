"""Small ONNX models for the `batchserve optimize` tests, built with onnx.helper from seeded
random weights: a 3-layer MLP classifier to quantize and prune, and graphs the structured
pruner must refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN1, HIDDEN2, CLASSES = 8, 32, 24, 4


def _save(
    nodes: list[onnx.NodeProto],
    initializers: dict[str, np.ndarray],
    path: Path,
    inputs: int = FEATURES,
    outputs: int = CLASSES,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    return {
        "w1": w(FEATURES, HIDDEN1),  # Gemm, transB=0: [in, out]
        "b1": (rng.standard_normal(HIDDEN1) * 0.1).astype(np.float32),
        "w2": w(HIDDEN2, HIDDEN1),  # Gemm, transB=1: [out, in]
        "b2": (rng.standard_normal((1, HIDDEN2)) * 0.1).astype(np.float32),
        "w3": w(HIDDEN2, CLASSES),  # MatMul + Add bias
        "b3": (rng.standard_normal(CLASSES) * 0.1).astype(np.float32),
    }


def write_mlp(path: Path, seed: int = 0) -> Path:
    """x [batch, 8] -> Gemm -> Relu -> Gemm(transB) -> Relu -> MatMul -> Add -> y [batch, 4]
    logits: two hidden layers (32 and 24 units) for the structured pruner to shrink."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("MatMul", ["a2", "w3"], ["m3"], name="fc3"),
        helper.make_node("Add", ["m3", "b3"], ["y"], name="fc3_bias"),
    ]
    return _save(nodes, mlp_weights(seed), path)


def mlp_reference(
    x: np.ndarray,
    weights: dict[str, np.ndarray],
    keep1: np.ndarray | None = None,
    keep2: np.ndarray | None = None,
) -> np.ndarray:
    """The MLP in numpy, with only the hidden units `keep1`/`keep2` (default all) alive."""
    h1 = np.maximum(x @ weights["w1"] + weights["b1"], 0)
    if keep1 is not None:
        mask = np.zeros(HIDDEN1, np.float32)
        mask[keep1] = 1
        h1 = h1 * mask
    h2 = np.maximum(h1 @ weights["w2"].T + weights["b2"], 0)
    if keep2 is not None:
        mask = np.zeros(HIDDEN2, np.float32)
        mask[keep2] = 1
        h2 = h2 * mask
    return h2 @ weights["w3"] + weights["b3"]  # type: ignore[no-any-return]


def write_shared_weight(path: Path) -> Path:
    """x -> MatMul(w) -> Relu -> MatMul(w): one initializer used by both layers."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w"], ["y"], name="second"),
    ]
    w = rng.standard_normal((FEATURES, FEATURES)).astype(np.float32)
    return _save(nodes, {"w": w}, path, outputs=FEATURES)


def write_softmax_between(path: Path) -> Path:
    """x -> MatMul -> Softmax -> MatMul: a non-elementwise operator between two layers."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Softmax", ["h"], ["s"], name="mixing_softmax", axis=-1),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="second"),
    ]
    weights = {
        "w1": rng.standard_normal((FEATURES, 16)).astype(np.float32),
        "w2": rng.standard_normal((16, CLASSES)).astype(np.float32),
    }
    return _save(nodes, weights, path)


def write_residual(path: Path) -> Path:
    """a = Relu(x W1) feeds both the next layer and a skip connection: a (a W2) + a."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["m"], name="second"),
        helper.make_node("Add", ["m", "a"], ["r"], name="skip_add"),
        helper.make_node("MatMul", ["r", "w3"], ["y"], name="head"),
    ]
    weights = {
        "w1": rng.standard_normal((FEATURES, 16)).astype(np.float32),
        "w2": rng.standard_normal((16, 16)).astype(np.float32),
        "w3": rng.standard_normal((16, CLASSES)).astype(np.float32),
    }
    return _save(nodes, weights, path)


def sample_inputs(rows: int = 256, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype(np.float32)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def write_data(directory: Path, model: Path, rows: int = 256) -> tuple[Path, Path]:
    """Inputs and the fp32 model's own predictions as labels (so its accuracy is 1.0)."""
    directory.mkdir(parents=True, exist_ok=True)
    x = sample_inputs(rows)
    labels = run(model, x).argmax(axis=1).astype(np.int64)
    np.save(directory / "x.npy", x)
    np.save(directory / "y.npy", labels)
    return directory / "x.npy", directory / "y.npy"
