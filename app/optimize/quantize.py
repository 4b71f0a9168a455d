"""Quantization with ONNX Runtime's own tools (onnxruntime.quantization), not a hand-written
quantizer, and fp16 conversion for GPUs.

- dynamic: weights to int8 ahead of time, activations quantized at run time per batch; no
  calibration data needed. Suits MatMul-heavy models (transformers) on CPUs.
- static: weights and activations int8 in QDQ format, activation ranges calibrated on
  representative inputs (MinMax, Entropy or Percentile). Usually the fastest int8 on CPU.
- fp16: float weights and compute in half precision with FP32 inputs and outputs kept, so
  clients still send FP32; for GPUs (CPUs lack most fp16 kernels).

Weights are quantized per channel by default: per tensor, one scale has to cover every
output channel's range, and the narrow channels lose their precision (on MiniLM, per tensor
moved the embeddings markedly further from the float model's). Models are pre-processed first as ORT
recommends (symbolic shape inference and graph optimization); where a step cannot handle a
graph (ai.onnx.ml operators, e.g. from scikit-learn) it is dropped and the report says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from app.optimize.data import CalibrationReader, calibration_batches
from app.optimize.errors import OptimizeError, require
from app.optimize.int8_cpu import int8_saturation


class Mode(StrEnum):
    DYNAMIC = "dynamic"
    STATIC = "static"
    FP16 = "fp16"


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("int8", "uint8")
#: Operators whose presence shows ORT's quantizer really quantized something.
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "QLinearConv",
     "ConvInteger", "DequantizeLinear"}
)  # fmt: skip


@dataclass(frozen=True)
class QuantizeOptions:
    mode: Mode
    per_channel: bool = True
    calibrate_method: str = "minmax"
    weight_type: str = "int8"
    activation_type: str = "int8"
    #: 7-bit weights; None decides from this CPU (app.optimize.int8_cpu).
    reduce_range: bool | None = None
    exclude_nodes: tuple[str, ...] = ()
    preprocess: bool = True
    calibration_batch_size: int = 32

    def describe(self) -> str:
        if self.mode is Mode.FP16:
            return "fp16 (FP32 inputs/outputs kept)"
        channel = "per-channel" if self.per_channel else "per-tensor"
        if self.mode is Mode.DYNAMIC:
            return f"{self.weight_type} dynamic, {channel} weights"
        return f"{self.weight_type} static QDQ, {channel}, {self.calibrate_method} calibration"


def node_names(model: onnx.ModelProto) -> list[str]:
    return [node.name for node in model.graph.node]


def check_exclusions(model: onnx.ModelProto, exclude: tuple[str, ...], stage: str) -> None:
    """Every node to exclude must exist, or a typo would silently quantize it."""
    names = node_names(model)
    unknown = [name for name in exclude if name not in names]
    if unknown:
        shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
        raise OptimizeError(
            f"--exclude-nodes names nodes the {stage} graph does not have: {unknown}; its "
            f"nodes are: {shown}"
        )


def _untyped_float_tensors(model: onnx.ModelProto) -> list[str]:
    """Node outputs the graph gives no type for (shape inference could not reach them).
    ORT's static quantizer skips calibrating those and then fails on ranges it lacks."""
    typed = {v.name for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    return [out for node in model.graph.node for out in node.output if out and out not in typed]


def preprocess(source: Path, target: Path) -> list[str]:
    """ORT's quant_pre_process, stepping down when a step cannot handle the graph; returns
    notes on what was skipped, for the report."""
    require("sympy", "quantization's pre-processing (symbolic shape inference)")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = source.resolve(), target.resolve()  # before the chdir below
    notes: list[str] = []
    attempts: list[dict[str, bool]] = [
        {},
        {"skip_symbolic_shape": True},
        {"skip_symbolic_shape": True, "skip_optimization": True},
    ]
    reasons = {
        1: "symbolic shape inference failed ({error}); used ONNX shape inference only",
        2: "graph optimization left tensors without types ({error}); pre-processed without it",
    }
    for index, skip in enumerate(attempts):
        error = ""
        try:
            # On failure ORT's symbolic shape inference saves a debug copy of the model into
            # the working directory: keep it in a scratch directory, not the user's.
            with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), _quiet():
                quant_pre_process(str(source), str(target), **skip)
        except Exception as exc:  # ORT raises bare Exceptions here
            error = str(exc) or type(exc).__name__
        else:
            untyped = _untyped_float_tensors(onnx.load(str(target), load_external_data=False))
            if not untyped or index == len(attempts) - 1:
                return notes
            error = f"untyped: {', '.join(untyped[:5])}"
        if index + 1 < len(attempts):
            notes.append(reasons[index + 1].format(error=error))
        else:
            raise OptimizeError(f"quantization pre-processing failed: {error}; try --no-preprocess")
    return notes


@contextlib.contextmanager
def _quiet() -> Any:
    """ORT's quantization tools print progress to stdout and warn through logging; keep
    the command's own output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize(
    source: Path,
    target: Path,
    options: QuantizeOptions,
    calibration: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the quantized (or fp16) form of `source` to `target`; returns what was done,
    for the report."""
    details: dict[str, Any] = {"settings": {**asdict(options), "mode": str(options.mode)}}
    original = onnx.load(str(source))
    check_exclusions(original, options.exclude_nodes, "source")
    if options.mode is Mode.FP16:
        _to_fp16(original, target, options.exclude_nodes)
        return details
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    reduce_range = _reduce_range(options, details)
    with tempfile.TemporaryDirectory(prefix="batchserve-quantize-") as work:
        model_input = source
        if options.preprocess:
            model_input = Path(work) / "preprocessed.onnx"
            details["preprocess"] = preprocess(source, model_input) or ["full (ORT's defaults)"]
            check_exclusions(
                onnx.load(str(model_input), load_external_data=False),
                options.exclude_nodes,
                "pre-processed (rerun with --no-preprocess to keep the original names)",
            )
        common: dict[str, Any] = {
            "per_channel": options.per_channel,
            "reduce_range": reduce_range,
            "weight_type": types[options.weight_type],
            "nodes_to_exclude": list(options.exclude_nodes) or None,
        }
        try:
            if options.mode is Mode.DYNAMIC:
                with _quiet():
                    quantize_dynamic(str(model_input), str(target), **common)
            else:
                if calibration is None:
                    raise OptimizeError("static quantization needs calibration inputs")
                batches = calibration_batches(calibration, options.calibration_batch_size)
                details["calibration"] = {
                    "batches": len(batches),
                    "rows": sum(len(next(iter(b.values()))) for b in batches),
                }
                methods = {
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }
                static: dict[str, Any] = {
                    **common,
                    "quant_format": QuantFormat.QDQ,
                    "activation_type": types[options.activation_type],
                    "calibrate_method": methods[options.calibrate_method],
                }
                try:
                    with _quiet():
                        quantize_static(
                            str(model_input), str(target), CalibrationReader(batches), **static
                        )
                except ValueError as exc:
                    # ORT 1.2x-1.3x: its int32-bias scale adjustment takes a per-channel Gemm
                    # weight scale for a per-tensor one and fails ("truth value of an array");
                    # the adjustment only matters for vanishing weight scales, so go without.
                    if not options.per_channel or "truth value" not in str(exc):
                        raise
                    static["extra_options"] = {"QDQDisableWeightAdjustForInt32Bias": True}
                    details["workaround"] = (
                        f"ORT's int32-bias weight-scale adjustment failed ({exc}); quantized "
                        "with QDQDisableWeightAdjustForInt32Bias"
                    )
                    with _quiet():
                        quantize_static(
                            str(model_input), str(target), CalibrationReader(batches), **static
                        )
        except OptimizeError:
            raise
        except Exception as exc:  # ORT's quantizer raises plain RuntimeError/ValueError
            raise OptimizeError(
                f"ONNX Runtime's {options.mode} quantization failed on {source}: {exc}; "
                "--exclude-nodes can leave the node it names in float"
            ) from None
    quantized = onnx.load(str(target), load_external_data=False)
    kinds: dict[str, int] = {}
    for node in quantized.graph.node:
        if node.op_type in QUANTIZED_OPS:
            kinds[node.op_type] = kinds.get(node.op_type, 0) + 1
    if not kinds:
        raise OptimizeError(
            f"ONNX Runtime quantized nothing in {source} (no MatMul/Gemm/Conv it could take?)"
        )
    details["quantized_nodes"] = kinds
    return details


def _reduce_range(options: QuantizeOptions, details: dict[str, Any]) -> bool:
    """The options' choice, else 7-bit weights exactly where this CPU's int8 kernels could
    saturate on int8 weights; the report says which and why."""
    if options.reduce_range is not None:
        details["reduce_range"] = {"value": options.reduce_range, "why": "set by the caller"}
        return options.reduce_range
    check = int8_saturation()
    value = check.saturates and options.weight_type == "int8"
    why = check.why if options.weight_type == "int8" else "uint8 weights do not saturate"
    details["reduce_range"] = {"value": value, "why": f"auto: {why}"}
    return value


def _to_fp16(model: onnx.ModelProto, target: Path, exclude: tuple[str, ...]) -> None:
    """Float tensors to fp16, inputs and outputs kept FP32. The converter ships inside
    onnxruntime (onnxruntime.transformers.float16, onnxconverter-common's code), so no extra
    package; ai.onnx.ml and other fp16-less operators stay FP32 behind Casts."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST),
            node_block_list=list(exclude) or None,
        )
    except Exception as exc:
        raise OptimizeError(f"fp16 conversion failed: {exc}") from None
    onnx.save(converted, str(target))
