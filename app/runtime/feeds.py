"""Inputs a session runs on before any request: synthetic ones, or a sample's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from app.tensors import TensorSpec, numpy_dtype


def synthetic_inputs(specs: Sequence[TensorSpec], rows: int | None) -> dict[str, np.ndarray]:
    """Zeros (strings "0") of each input's shape, variable axes 1, the first axis `rows`."""
    feeds = {}
    for spec in specs:
        dims = [1 if d < 0 else d for d in spec.shape]
        if rows is not None and dims:
            dims[0] = rows
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(dims, "0", dtype=object)
        else:
            feeds[spec.name] = np.zeros(dims, dtype=numpy_dtype(spec.datatype))
    return feeds


def repeat_rows(sample: Mapping[str, np.ndarray], rows: int | None) -> dict[str, np.ndarray]:
    """`sample`'s arrays with their rows repeated (cycled) to `rows` rows (None: as given)."""
    if rows is None:
        return dict(sample)
    return {
        name: np.take(array, np.arange(rows) % array.shape[0], axis=0)
        for name, array in sample.items()
    }
