"""Shared by the app.protocol.codec tests (tests/unit/test_codec_*.py): a two-input model's
specs, request builders, and decoding with the checks those tests make."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import InvalidInputError
from app.protocol.codec import (
    decode_infer_request,
)
from app.tensors import V2_TO_NUMPY, TensorSpec

# A two-input model: a batched FP32 feature matrix and a batched INT64 vector.
X = TensorSpec("x", "FP32", (-1, 3))
IDX = TensorSpec("idx", "INT64", (-1,))
INPUTS = (X, IDX)
Y = TensorSpec("y", "FP32", (-1, 2))
LABEL = TensorSpec("label", "INT64", (-1,))
OUTPUTS = (Y, LABEL)
OUTPUT_SPECS = {s.name: s for s in OUTPUTS}
EXPECTED_INPUTS = "x (FP32 [-1, 3]), idx (INT64 [-1])"


def tensor(name: str, datatype: str, shape: list[Any], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def valid_x(**overrides: Any) -> dict[str, Any]:
    entry = tensor("x", "FP32", [2, 3], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    entry.update(overrides)
    return entry


def valid_idx(**overrides: Any) -> dict[str, Any]:
    entry = tensor("idx", "INT64", [2], [7, 8])
    entry.update(overrides)
    return entry


def decode(
    doc: Any,
    inputs: tuple[TensorSpec, ...] = INPUTS,
    outputs: tuple[TensorSpec, ...] = OUTPUTS,
) -> Any:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return decode_infer_request(body, inputs, outputs)


def decode_single(spec: TensorSpec, entry: dict[str, Any]) -> np.ndarray:
    """Decode a request for a model whose only input is `spec`; return that array."""
    return decode({"inputs": [entry]}, inputs=(spec,)).inputs[spec.name]


def assert_rejected(doc: Any, *fragments: str, inputs: tuple[TensorSpec, ...] = INPUTS) -> None:
    """Decoding `doc` raises InvalidInputError whose message contains every fragment."""
    with pytest.raises(InvalidInputError, match=re.escape(fragments[0])) as info:
        decode(doc, inputs=inputs)
    for fragment in fragments[1:]:
        assert fragment in info.value.message
    assert str(info.value) == info.value.message


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


NUMERIC_DATATYPES = sorted(d for d in V2_TO_NUMPY if d != "BYTES")


def extreme_values(datatype: str) -> list[Any]:
    """The smallest, a zero, the smallest positive and the largest value of `datatype`."""
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "b":
        values: Any = [True, False, True, True]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)  # type: ignore[type-var]
        values = [info.min, 0, 1, info.max]
    else:
        finfo = np.finfo(dtype)  # type: ignore[arg-type]
        values = [finfo.min, -0.0, finfo.smallest_subnormal, finfo.max]
    return np.array(values, dtype=dtype).tolist()
