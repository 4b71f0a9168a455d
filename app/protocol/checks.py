"""The checks every transport's decoder makes of a v2 request against the model's specs,
so a bad request gets the same 400 (gRPC: INVALID_ARGUMENT) and the same message however it
came: unknown, repeated, missing or mistyped inputs, shapes, the sets of inputs a model
takes, non-finite values, unknown outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.errors import InvalidInputError
from app.tensors import TensorSpec


def fail(message: str) -> InvalidInputError:
    return InvalidInputError(message)


def describe_specs(specs: Sequence[TensorSpec]) -> str:
    """`input (FP32 [-1, 64]), mask (INT64 [-1, -1])`: for error messages."""
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs)


#: No tensor may declare more elements than this, even with a zero dimension among its dims
#: (numpy refuses shapes whose non-zero dims multiply past its index range).
MAX_ELEMENTS = 2**40


def decode_shape(name: str, raw: Any) -> tuple[int, ...]:
    # Plain loops: this runs for every input of every request (generators cost more).
    elements = 1
    if isinstance(raw, list):
        for d in raw:
            if type(d) is not int or d < 0:  # type(d) is int: JSON true is not a dimension
                break
            if d:
                elements *= d
        else:
            if elements > MAX_ELEMENTS:
                raise fail(f"input '{name}': shape {raw} declares more than 2**40 elements")
            return tuple(raw)
    raise fail(f"input '{name}': 'shape' must be a list of non-negative integers, got {raw!r}")


def check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the model receives for a request's `shape` (the same object unless a
    one-per-sample input came as [batch, 1]); refused when it does not fit the spec."""
    wanted = spec.shape
    if len(shape) == len(wanted):
        for w, g in zip(wanted, shape):  # noqa: B905 (lengths checked)
            if w >= 0 and w != g:
                break
        else:
            return shape
    if spec.one_per_sample and len(shape) == 2 and shape[1] == 1:
        return shape[:1]
    raise fail(
        f"input '{spec.name}': shape {list(shape)} does not match the model's "
        f"{list(spec.shape)} (-1 is any size)"
    )


def input_spec(
    specs: Mapping[str, TensorSpec],
    inputs: Sequence[TensorSpec],
    decoded: Mapping[str, Any],
    name: Any,
    datatype: Any,
) -> TensorSpec:
    """The spec of the input `name` a request gives with `datatype`; refused when the model
    has no such input, the request gave it already, or the datatype is not the model's."""
    if not isinstance(name, str):
        raise fail("each entry of 'inputs' needs a string 'name'")
    spec = specs.get(name)
    if spec is None:
        raise fail(f"unknown input '{name}'; the model expects {describe_specs(inputs)}")
    if name in decoded:
        raise fail(f"input '{name}' is given more than once")
    if datatype != spec.datatype:
        raise fail(
            f"input '{name}': datatype {datatype!r} does not match the model's {spec.datatype}"
        )
    return spec


def complete_inputs(
    decoded: dict[str, np.ndarray],
    inputs: Sequence[TensorSpec],
    input_sets: Sequence[tuple[str, ...]],
    reject_nonfinite: bool,
) -> dict[str, np.ndarray]:
    """The decoded inputs, in the model's order, once they are a complete set the model
    takes (and finite, where it refuses NaN and infinity)."""
    if input_sets:
        if not any(decoded.keys() == set(names) for names in input_sets):
            choices = " or ".join(str(list(names)) for names in input_sets)
            raise fail(f"give exactly one of these sets of inputs: {choices}; got {list(decoded)}")
    elif len(decoded) != len(inputs):
        missing = [s.name for s in inputs if s.name not in decoded]
        raise fail(f"missing input(s) {missing}; the model expects {describe_specs(inputs)}")
    if reject_nonfinite:
        _check_finite(decoded)
    if len(decoded) > 1:
        return {s.name: decoded[s.name] for s in inputs if s.name in decoded}
    return decoded


def check_output(name: Any, known: set[str]) -> str:
    """A requested output's name, refused unless the model has it."""
    if not isinstance(name, str) or name not in known:
        raise fail(f"unknown output {name!r} requested; the model's outputs are {sorted(known)}")
    return name


def _check_finite(inputs: Mapping[str, np.ndarray]) -> None:
    for name, array in inputs.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise fail(
                f"input '{name}': holds NaN or infinite values, which this model refuses "
                "(reject_nonfinite in its config)"
            )


def classification_count(name: str, value: object) -> int:
    """An output's `parameters.classification`: a positive number of classes."""
    if type(value) is not int or value < 1:
        raise fail(
            f"output '{name}': parameters.classification must be a positive integer (the "
            f"number of top classes to return), got {value!r}"
        )
    return value
