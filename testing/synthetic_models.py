"""Synthetic ONNX models built at run time for tests and benchmarks (never downloaded or
committed): a compute-bound MLP of any depth, a BYTES identity model, a CNN, a sum over
any width (for large bodies), and token models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    """Check and write a graph as an opset-17 model (IR 8, loadable by any current ORT);
    returns `path`."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_sum_model(path: Path) -> None:
    """y [batch] = the sum of x FP32 [batch, n] over any n: a model that takes big bodies."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axis"], ["y"], keepdims=0)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")],
    )
    save_graph(graph, path)


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
    save_graph(graph, path)


def write_text_identity_model(path: Path) -> None:
    """A BYTES model: `text` string [batch] -> Identity -> `echo` string [batch]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "text_identity",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    save_graph(graph, path)


def write_cnn_model(
    path: Path, channels: tuple[int, int, int] = (32, 64, 128), size: int = 28
) -> None:
    """A small image CNN, compute-bound with small weights: x FP32 [batch, 1, size, size] ->
    3x (Conv 3x3 + Relu, MaxPool 2x2 after the second) -> GlobalAveragePool -> Gemm 10 ->
    y FP32 [batch, 10]. About 60 MFLOP a sample with the default channels."""
    rng = np.random.default_rng(0)
    c1, c2, c3 = channels

    def conv(name: str, out_c: int, in_c: int) -> list[onnx.TensorProto]:
        w = rng.standard_normal((out_c, in_c, 3, 3)) / np.sqrt(in_c * 9)
        return [
            numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
            numpy_helper.from_array(np.zeros(out_c, np.float32), f"{name}_b"),
        ]

    def conv_node(name: str, source: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node(
                "Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_o"], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [f"{name}_o"], [f"{name}_r"]),
        ]

    nodes = [
        *conv_node("c1", "x"),
        *conv_node("c2", "c1_r"),
        helper.make_node("MaxPool", ["c2_r"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        *conv_node("c3", "p2"),
        helper.make_node("GlobalAveragePool", ["c3_r"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"]),
    ]
    initializers = [
        *conv("c1", c1, 1),
        *conv("c2", c2, c1),
        *conv("c3", c3, c2),
        numpy_helper.from_array(
            (rng.standard_normal((c3, 10)) / np.sqrt(c3)).astype(np.float32), "fc_w"
        ),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    save_graph(graph, path)


def write_gather_model(path: Path, rows: int = 10, width: int = 4) -> None:
    """Looks rows up in a table: ids INT64 [batch, 1] -> Gather -> out FP32 [batch, 1, width].
    An id outside [0, rows) makes ONNX Runtime fail the whole execution ("indices element
    out of data bounds"): the way to test that one bad request fails alone in its batch."""
    table = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, width])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    save_graph(graph, path)


def write_token_model(path: Path, vocab: int = 1000, width: int = 32) -> None:
    """A masked embedding model shaped like a text encoder: input_ids and attention_mask
    INT64 [batch, sequence] -> `hidden` FP32 [batch, sequence, width] (embeddings times the
    mask) and `pooled` FP32 [batch, width] (their masked mean). Padding with id 0 and mask 0
    leaves every request's own outputs unchanged, as with a real attention model."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "table")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["embedded"], axis=0),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
            helper.make_node("Mul", ["embedded", "mask3"], ["hidden"]),
            helper.make_node("ReduceSum", ["hidden", "seq_axis"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=0),
            helper.make_node("Max", ["count", "one"], ["safe_count"]),
            helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),
        ],
        "token_model",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "hidden", TensorProto.FLOAT, ["batch", "sequence", width]
            ),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            table,
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    save_graph(graph, path)


def write_word_tokenizer(path: Path, words: list[str]) -> None:
    """A word-level HuggingFace tokenizer.json: `words` get ids 2.., anything else [UNK] (1),
    so ids stay within write_token_model's vocabulary for fewer than 998 words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 1, **{word: i + 2 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
