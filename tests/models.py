"""ONNX models the tests build for themselves (never downloaded, never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_heavy_model(path: Path, width: int = 16, hidden: int = 2048, blocks: int = 16) -> None:
    """A compute-bound MLP with little I/O: x FP32 [batch, width] -> MatMul up to `hidden`,
    `blocks` x (MatMul hidden x hidden, Relu) sharing one weight matrix (the file stays
    ~17 MB), MatMul back to `width` -> y FP32 [batch, width]. About 135 MFLOP a sample, so
    a worker running it is busy computing, not waiting for requests to be parsed."""
    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"])]
    current = "h"
    for i in range(blocks):
        nodes += [
            helper.make_node("MatMul", [current, "w"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    nodes.append(helper.make_node("MatMul", [current, "w_out"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[
            numpy_helper.from_array(weight(width, hidden), "w_in"),
            numpy_helper.from_array(weight(hidden, hidden), "w"),
            numpy_helper.from_array(weight(hidden, width), "w_out"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_text_identity_model(path: Path) -> None:
    """A BYTES model: `text` string [batch] -> Identity -> `echo` string [batch]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "text_identity",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
