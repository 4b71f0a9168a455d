"""One ONNX Runtime InferenceSession bound to one device."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.errors import ModelLoadError
from app.protocol.datatypes import ONNX_TO_V2, numpy_dtype
from app.protocol.types import TensorSpec

_CUDA = re.compile(r"^cuda:(\d+)$")


def _providers_for(device: str) -> list[Any]:
    match = _CUDA.match(device)
    if match:
        return [("CUDAExecutionProvider", {"device_id": int(match[1])}), "CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    raise ModelLoadError(f"unknown device {device!r}; use 'cpu' or 'cuda:N'")


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would take the core the event loop needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxInstance:
    """A model version's session on one device; implements batching.BatchRunner."""

    def __init__(self, model_path: Path, device: str, threads: int, index: int) -> None:
        self.device = device
        self.label = f"{device}/{index}"
        self.threads = threads
        wanted = _providers_for(device)
        try:
            self._session = ort.InferenceSession(
                str(model_path), _session_options(threads), providers=wanted
            )
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise ModelLoadError(f"ONNX Runtime could not load {model_path}: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.providers:
            raise ModelLoadError(
                f"device {device} asked for CUDAExecutionProvider but the session got "
                f"{self.providers} (available here: {ort.get_available_providers()}); "
                "is an NVIDIA GPU with the CUDA and cuDNN libraries onnxruntime-gpu needs "
                'present? Use device = "cpu" to serve on the CPU'
            )
        self.inputs = graph_tensor_specs(self._session.get_inputs())
        self.outputs = graph_tensor_specs(self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, batch_sizes: Iterable[int], batches: bool) -> None:
        """Run once per batch size on zeros so first requests don't pay for lazy init."""
        for size in batch_sizes:
            feeds = {}
            for spec in self.inputs:
                dims = [1 if d < 0 else d for d in spec.shape]
                if batches:
                    dims[0] = size
                if spec.datatype == "BYTES":
                    feeds[spec.name] = np.full(dims, "", dtype=object)
                else:
                    feeds[spec.name] = np.zeros(dims, dtype=numpy_dtype(spec.datatype))
            self.run(feeds)


def graph_tensor_specs(args: Sequence[Any]) -> tuple[TensorSpec, ...]:
    """TensorSpecs from ORT NodeArgs: named or unknown dims become -1 (variable)."""
    specs = []
    for arg in args:
        datatype = ONNX_TO_V2.get(arg.type)
        if datatype is None:
            raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which is not supported")
        shape = arg.shape or []
        specs.append(
            TensorSpec(
                name=arg.name,
                datatype=datatype,
                shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape),
                dim_names=tuple(d if isinstance(d, str) else None for d in shape),
            )
        )
    return tuple(specs)
