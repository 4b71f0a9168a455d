"""Small ONNX models for the `batchserve optimize` tests, built with onnx.helper from seeded
random weights: a 3-layer MLP classifier to quantize and prune, and graphs the structured
pruner must refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from testing.synthetic_models import save_graph as write_graph

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
    return write_graph(graph, path)


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


WIDTH, INNER = 16, 64


def bert_ffn_weights(seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "ln_scale": (1 + 0.1 * rng.standard_normal(WIDTH)).astype(np.float32),
        "ln_bias": (0.1 * rng.standard_normal(WIDTH)).astype(np.float32),
        "w_in": (rng.standard_normal((WIDTH, INNER)) / np.sqrt(WIDTH)).astype(np.float32),
        "b_in": (0.1 * rng.standard_normal(INNER)).astype(np.float32),
        "w_out": (rng.standard_normal((INNER, WIDTH)) / np.sqrt(INNER)).astype(np.float32),
        "b_out": (0.1 * rng.standard_normal(WIDTH)).astype(np.float32),
        "w_head": (rng.standard_normal((WIDTH, CLASSES)) / np.sqrt(WIDTH)).astype(np.float32),
    }


def write_bert_ffn(path: Path, seed: int = 4) -> Path:
    """One BERT-family block as exported graphs have it: x [batch, seq, 16] -> LayerNorm ->
    MatMul -> bias Add -> GELU written as Div, Erf, Add, Mul, Mul with Constant nodes ->
    MatMul -> bias Add -> residual Add -> LayerNorm -> MatMul head [batch, seq, 4]. The 64
    intermediate units are private to the block; the 16 model-width units are not."""

    def constant(name: str, value: float) -> onnx.NodeProto:
        tensor = numpy_helper.from_array(np.array(value, dtype=np.float32), name)
        return helper.make_node("Constant", [], [name], name=f"{name}_node", value=tensor)

    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"],
                         name="ln1", axis=-1),
        helper.make_node("MatMul", ["ln", "w_in"], ["inner"], name="intermediate"),
        helper.make_node("Add", ["b_in", "inner"], ["pre"], name="intermediate_bias"),
        constant("sqrt2", float(np.sqrt(2.0))),
        helper.make_node("Div", ["pre", "sqrt2"], ["scaled"], name="gelu_div"),
        helper.make_node("Erf", ["scaled"], ["erf"], name="gelu_erf"),
        constant("one", 1.0),
        helper.make_node("Add", ["erf", "one"], ["erf1"], name="gelu_add"),
        helper.make_node("Mul", ["pre", "erf1"], ["gelu2"], name="gelu_mul"),
        constant("half", 0.5),
        helper.make_node("Mul", ["gelu2", "half"], ["act"], name="gelu_half"),
        helper.make_node("MatMul", ["act", "w_out"], ["outer"], name="output"),
        helper.make_node("Add", ["b_out", "outer"], ["ffn"], name="output_bias"),
        helper.make_node("Add", ["ffn", "ln"], ["residual"], name="residual_add"),
        helper.make_node("LayerNormalization", ["residual", "ln_scale", "ln_bias"], ["ln2"],
                         name="ln2", axis=-1),
        helper.make_node("MatMul", ["ln2", "w_head"], ["y"], name="head"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "bert_ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in bert_ffn_weights(seed).items()],
    )
    return write_graph(graph, path)


def write_duplicated_units(path: Path, distinct: int = 12, seed: int = 5) -> Path:
    """x [batch, 8] -> MatMul -> Relu -> MatMul -> y: the hidden layer holds `distinct`
    units twice, the copy scaled by 3 (Relu(3z) = 3 Relu(z)), so half the units carry
    everything and a refit of the last layer can make up exactly for removing the copies."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((FEATURES, distinct)).astype(np.float32)
    w1 = np.concatenate([base, 3.0 * base], axis=1)
    w2 = rng.standard_normal((2 * distinct, CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    return _save(nodes, {"w1": w1, "w2": w2}, path)
