"""How large a request body for a model can be, in each encoding, so that a larger one is
refused (413) before it is read: a model that takes at most 64 rows of 64 floats need not
receive, let alone parse, 63 MB."""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.tensors import V2_TO_NUMPY, TensorSpec

#: Bytes a JSON number may take with its separator and some whitespace (a float64 written
#: in full, "-1.7976931348623157e+308, ", is 26).
JSON_BYTES_PER_VALUE = 32
#: Room for everything but the tensors' values: names, shapes, parameters, outputs.
ENVELOPE_BYTES = 64 * 1024


def largest_body(inputs: Sequence[TensorSpec], max_batch_size: int, binary: bool) -> int | None:
    """The most bytes a valid request for these inputs can take (JSON, or binary tensors
    after a JSON header), with margin; None when no bound follows from the specs (a
    variable dimension, a BYTES input)."""
    per_request = 0
    for spec in inputs:
        dims = spec.shape[1:] if max_batch_size > 0 else spec.shape
        if spec.datatype == "BYTES" or any(d < 0 for d in dims):
            return None
        values = math.prod(dims) * max(max_batch_size, 1)
        width = V2_TO_NUMPY[spec.datatype].itemsize if binary else JSON_BYTES_PER_VALUE
        per_request += values * width
    return per_request + ENVELOPE_BYTES


#: largest_body of each version's inputs, by the inputs' identity (it is on the hot path).
_BOUNDS: dict[int, tuple[Sequence[TensorSpec], int | None, int | None]] = {}


def largest_body_of(inputs: Sequence[TensorSpec], max_batch_size: int, binary: bool) -> int | None:
    """largest_body, computed once per version's inputs (kept while they are the same
    object: a reloaded version has inputs of its own)."""
    bounds = _BOUNDS.get(id(inputs))
    if bounds is None or bounds[0] is not inputs:
        bounds = (
            inputs,
            largest_body(inputs, max_batch_size, binary=False),
            largest_body(inputs, max_batch_size, binary=True),
        )
        _BOUNDS[id(inputs)] = bounds
    return bounds[2] if binary else bounds[1]
