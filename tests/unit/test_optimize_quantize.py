"""Each quantization mode on a small MLP built here: the graph really is quantized (or
fp16), per-channel is the default, excluded nodes stay float, outputs stay close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from app.optimize.errors import OptimizeError
from app.optimize.int8_cpu import int8_saturation
from app.optimize.quantize import Mode, QuantizeOptions, quantize
from tests.optimize_models import run, sample_inputs, write_mlp


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return write_mlp(tmp_path / "mlp.onnx")


def ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def close_to_fp32(source: Path, target: Path) -> float:
    """Top-1 agreement of `target` with `source` on fresh inputs."""
    x = sample_inputs(512, seed=11)
    return float(np.mean(run(source, x).argmax(1) == run(target, x).argmax(1)))


def weight_scales(path: Path) -> dict[str, np.ndarray]:
    """The scale of each DequantizeLinear of a weight initializer, by weight name."""
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = {
        node.input[0].removesuffix("_quantized"): init[node.input[1]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in init
    }
    return {name: scale for name, scale in scales.items() if name in ("w1", "w2", "w3")}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_is_calibrated_per_channel_and_agrees(
    mlp: Path, tmp_path: Path, method: str
) -> None:
    target = tmp_path / "static.onnx"
    options = QuantizeOptions(mode=Mode.STATIC, calibrate_method=method)
    details = quantize(mlp, target, options, {"x": sample_inputs(256)})
    assert "QuantizeLinear" in ops(target) and "DequantizeLinear" in ops(target)
    assert details["calibration"] == {"batches": 8, "rows": 256}
    scales = weight_scales(target)
    assert scales and all(s.size > 1 for s in scales.values())  # one scale per channel
    assert close_to_fp32(mlp, target) >= 0.95


def quantized_weights(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors of a QDQ graph (the inputs of its weights' DequantizeLinear)."""
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        init[node.input[0]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and init.get(node.input[0]) is not None
        and init[node.input[0]].dtype == np.int8
        and init[node.input[0]].ndim == 2
    ]


@pytest.mark.parametrize(
    ("machine", "flags", "saturates"),
    [
        ("x86_64", "fpu sse2 avx avx2 fma", True),  # AVX2 only: VPMADDUBSW sums in 16 bits
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),
        ("aarch64", "fp asimd asimddp", False),
    ],
)
def test_int8_saturation_is_read_from_the_cpu_flags(
    tmp_path: Path, machine: str, flags: str, saturates: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n")
    check = int8_saturation(cpuinfo, machine)
    assert check.saturates is saturates, check.why
    unreadable = int8_saturation(tmp_path / "missing", "x86_64")
    assert not unreadable.saturates and "could not be read" in unreadable.why


def test_reduce_range_gives_7_bit_weights_and_its_default_follows_the_cpu(
    mlp: Path, tmp_path: Path
) -> None:
    widest = {}
    for reduce_range in (True, False, None):
        target = tmp_path / f"{reduce_range}.onnx"
        options = QuantizeOptions(mode=Mode.STATIC, reduce_range=reduce_range)
        details = quantize(mlp, target, options, {"x": sample_inputs(256)})
        widest[reduce_range] = max(
            int(np.abs(w.astype(np.int32)).max()) for w in quantized_weights(target)
        )
        chosen = details["reduce_range"]
        if reduce_range is None:
            assert chosen["why"].startswith("auto: ")
            assert chosen["value"] is int8_saturation().saturates
        else:
            assert chosen == {"value": reduce_range, "why": "set by the caller"}
    assert widest[True] <= 64 and widest[False] == 127
    assert (widest[None] <= 64) is int8_saturation().saturates


def test_per_tensor_gives_one_scale_per_weight(mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "per_tensor.onnx"
    options = QuantizeOptions(mode=Mode.STATIC, per_channel=False)
    quantize(mlp, target, options, {"x": sample_inputs(64)})
    scales = weight_scales(target)
    assert scales and all(s.size == 1 for s in scales.values())


def test_dynamic_quantizes_weights_without_calibration(mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "dynamic.onnx"
    details = quantize(mlp, target, QuantizeOptions(mode=Mode.DYNAMIC))
    assert set(details["quantized_nodes"]) & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert target.stat().st_size < mlp.stat().st_size
    assert close_to_fp32(mlp, target) >= 0.95


def test_fp16_keeps_fp32_inputs_and_outputs(mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "fp16.onnx"
    quantize(mlp, target, QuantizeOptions(mode=Mode.FP16))
    model = onnx.load(str(target))
    float16 = onnx.TensorProto.FLOAT16
    assert all(t.data_type == float16 for t in model.graph.initializer if t.name.startswith("w"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = sample_inputs(32)
    np.testing.assert_allclose(run(target, x), run(mlp, x), atol=0.05)


def test_excluded_nodes_stay_float(mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "excluded.onnx"
    options = QuantizeOptions(mode=Mode.STATIC, exclude_nodes=("fc3",), preprocess=False)
    quantize(mlp, target, options, {"x": sample_inputs(64)})
    model = onnx.load(str(target))
    fc3 = next(node for node in model.graph.node if node.name == "fc3")
    assert fc3.op_type == "MatMul" and fc3.input[1] == "w3"  # the float initializer itself
    assert "w1" in weight_scales(target) and "w3" not in weight_scales(target)


def test_unknown_excluded_node_is_named_with_the_graphs_nodes(mlp: Path, tmp_path: Path) -> None:
    options = QuantizeOptions(mode=Mode.DYNAMIC, exclude_nodes=("fc9",))
    with pytest.raises(OptimizeError, match=r"\['fc9'\].*fc1, relu1, fc2"):
        quantize(mlp, tmp_path / "never.onnx", options)
    assert not (tmp_path / "never.onnx").exists()
