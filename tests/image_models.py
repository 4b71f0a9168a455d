"""A tiny image classifier for the `[image]` tests, built with onnx.helper: the mean of each
colour channel of a [batch, 3, 32, 32] input, then one Gemm to four classes (red, green,
blue, dark), so that what a decoded image is can be told from its answer; and images made
here with Pillow (plain colours, hostile files)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

CLASSES = ("red", "green", "blue", "dark")
CONFIG = """\
max_batch_size = 8
labels = { logits = "labels.txt" }

[image]
input = "image"
resize = 40
crop = 32
"""


def write_colour_model(directory: Path) -> Path:
    """<directory>/colours: v1, config.toml with [image] and [labels], labels.txt."""
    weights = np.array(
        [[4, 0, 0, -1], [0, 4, 0, -1], [0, 0, 4, -1]], dtype=np.float32
    )  # a channel's mean in [0, 1] votes for its colour; all low, for dark
    bias = np.array([-1, -1, -1, 1], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["means"], keepdims=0),
        helper.make_node("Gemm", ["means", "w", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir = directory / "colours"
    (model_dir / "1").mkdir(parents=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.toml").write_text(CONFIG)
    (model_dir / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return model_dir


def encoded(image: Image.Image, kind: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


def plain(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header that declares `width` x `height` pixels, with almost no data:
    what a decompression bomb looks like before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
