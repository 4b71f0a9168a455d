"""Representative inputs and labels from .npy/.npz files, shaped for a model's inputs.

One `.npy` feeds a model with a single input; an `.npz` holds one array per input name. The
first axis is the sample (batch) axis throughout, as in the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.optimize.errors import OptimizeError
from app.tensors import TensorSpec, numpy_dtype


@dataclass(frozen=True)
class Dataset:
    """Inputs keyed by the model's input names, all with `rows` samples, and maybe labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    rows: int

    def rows_slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: array[start:stop] for name, array in self.inputs.items()}

    def batch(self, size: int) -> dict[str, np.ndarray]:
        """`size` samples, the data repeated when it has fewer rows (benchmark feeds)."""
        repeats = -(-size // self.rows)
        return {
            name: np.ascontiguousarray(np.concatenate([array] * repeats)[:size])
            for name, array in self.inputs.items()
        }


def load_inputs(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The arrays of `path` matched to `specs` and cast to their datatypes."""
    try:
        loaded: Any = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptimizeError(f"{path}: cannot read it as .npy or .npz: {exc}") from None
    names = [spec.name for spec in specs]
    if isinstance(loaded, np.ndarray):
        if len(specs) != 1:
            raise OptimizeError(
                f"{path} holds one array but the model has inputs {names}; give an .npz with "
                "one array per input name (np.savez(path, **{name: array}))"
            )
        arrays = {names[0]: loaded}
    else:
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise OptimizeError(
                f"{path} has arrays {sorted(arrays)} but the model's inputs are {names}; "
                f"missing: {missing}"
            )
    result: dict[str, np.ndarray] = {}
    for spec in specs:
        array = arrays[spec.name]
        if spec.datatype == "BYTES":
            raise OptimizeError(f"input '{spec.name}' is BYTES (text); only tensors are supported")
        if array.ndim != len(spec.shape) or any(
            want >= 0 and got != want
            for want, got in zip(spec.shape[1:], array.shape[1:], strict=False)
        ):
            raise OptimizeError(
                f"{path}: array for input '{spec.name}' has shape {list(array.shape)}, the "
                f"model expects {list(spec.shape)} (-1 = any; the first axis is the samples)"
            )
        result[spec.name] = np.ascontiguousarray(array.astype(numpy_dtype(spec.datatype)))
    counts = {name: len(array) for name, array in result.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise OptimizeError(
            f"{path}: the inputs must have the same, non-zero sample count: {counts}"
        )
    return result


def load_dataset(data: Path, labels: Path | None, specs: Sequence[TensorSpec]) -> Dataset:
    """Inputs of `data` and, when given, one integer label per sample from `labels`."""
    inputs = load_inputs(data, specs)
    rows = len(next(iter(inputs.values())))
    label_array = None
    if labels is not None:
        try:
            label_array = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OptimizeError(f"{labels}: cannot read it as .npy: {exc}") from None
        if not isinstance(label_array, np.ndarray) or label_array.shape != (rows,):
            shape = getattr(label_array, "shape", None)
            raise OptimizeError(
                f"{labels}: expected one class label per sample, shape [{rows}]; got {shape}"
            )
        if not np.issubdtype(label_array.dtype, np.integer):
            raise OptimizeError(f"{labels}: labels must be integers, got {label_array.dtype}")
    return Dataset(inputs=inputs, labels=label_array, rows=rows)


def calibration_batches(
    inputs: dict[str, np.ndarray], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Equal-sized batches (the remainder dropped): ONNX Runtime's entropy and percentile
    calibrators stack per-batch histograms and fail on a short last batch."""
    rows = len(next(iter(inputs.values())))
    size = max(1, min(batch_size, rows))
    return [
        {name: array[start : start + size] for name, array in inputs.items()}
        for start in range(0, rows - size + 1, size)
    ]


class CalibrationReader:
    """An onnxruntime.quantization CalibrationDataReader over in-memory batches.

    Duck-typed rather than subclassed (the ABC accepts any class with `get_next`), so this
    module does not import ONNX Runtime's quantization package."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = batches
        self._iterator: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)
