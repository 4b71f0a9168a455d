"""Decode v2 JSON inference requests into numpy arrays and encode responses.

Validation happens here, once, against the model's input specs, so that a bad request is
answered 400 with a message naming the input and what was expected, before it is queued.
JSON goes through orjson; responses serialise numpy arrays directly (no per-element lists).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from app.errors import InvalidInputError
from app.protocol.datatypes import V2_TO_NUMPY
from app.protocol.types import InferRequest, TensorSpec

# numpy kinds a JSON array may decode to for each family of v2 datatypes.
_FLOAT_KINDS = frozenset("fiu")
_INT_KINDS = frozenset("iu")
_BOOL_KINDS = frozenset("b")


def _allowed_kinds(datatype: str) -> frozenset[str]:
    if datatype.startswith("FP"):
        return _FLOAT_KINDS
    if datatype == "BOOL":
        return _BOOL_KINDS
    return _INT_KINDS


def describe_specs(specs: Sequence[TensorSpec]) -> str:
    """`input (FP32 [-1, 64]), mask (INT64 [-1, -1])`: for error messages."""
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInputError(message)


def _decode_shape(name: str, raw: Any) -> tuple[int, ...]:
    _expect(
        isinstance(raw, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw),
        f"input '{name}': 'shape' must be a list of non-negative integers, got {raw!r}",
    )
    return tuple(raw)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    fits = len(shape) == len(spec.shape) and all(
        want < 0 or want == got for want, got in zip(spec.shape, shape, strict=True)
    )
    _expect(
        fits,
        f"input '{spec.name}': shape {list(shape)} does not match the model's "
        f"{list(spec.shape)} (-1 is any size)",
    )


def _decode_data(spec: TensorSpec, shape: tuple[int, ...], data: Any) -> np.ndarray:
    _expect(
        isinstance(data, list),
        f"input '{spec.name}': 'data' must be a JSON array (flat or nested) of "
        f"{spec.datatype} values",
    )
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError(
            f"input '{spec.name}': 'data' is not a rectangular array of {spec.datatype} values"
        ) from None
    expected = math.prod(shape)
    _expect(
        array.size == expected,
        f"input '{spec.name}': shape {list(shape)} needs {expected} values, 'data' has "
        f"{array.size}",
    )
    target = V2_TO_NUMPY[spec.datatype]
    if array.size and target.kind in "iu" and array.dtype.kind in "fO":
        # Integers beyond int64 (or mixed with small ones) make numpy choose float or object;
        # look at the values themselves so every valid UINT64 gets through, exactly.
        array = _exact_integers(spec, data, array.shape)
    if array.size:
        _expect(
            array.dtype.kind in _allowed_kinds(spec.datatype),
            f"input '{spec.name}': 'data' holds {_kind_name(array.dtype)} values, "
            f"which are not valid {spec.datatype}",
        )
        if target.kind in "iu" and array.dtype != target:
            info = np.iinfo(target)  # type: ignore[type-var]
            _expect(
                int(array.min()) >= info.min and int(array.max()) <= info.max,
                f"input '{spec.name}': values out of range for {spec.datatype} "
                f"[{info.min}, {info.max}]",
            )
    return array.astype(target, copy=False).reshape(shape)


def _exact_integers(spec: TensorSpec, data: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    flat = np.array(data, dtype=object).ravel().tolist()
    if not all(type(v) is int for v in flat):
        raise InvalidInputError(
            f"input '{spec.name}': 'data' holds float values, which are not valid {spec.datatype}"
        )
    info = np.iinfo(V2_TO_NUMPY[spec.datatype])  # type: ignore[type-var]
    _expect(
        min(flat) >= info.min and max(flat) <= info.max,
        f"input '{spec.name}': values out of range for {spec.datatype} [{info.min}, {info.max}]",
    )
    return np.array(flat, dtype=V2_TO_NUMPY[spec.datatype]).reshape(shape)


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "U": "string"}.get(
        dtype.kind, "non-numeric"
    )


def decode_infer_request(
    body: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> InferRequest:
    """Parse and validate a v2 JSON inference request against the model's specs."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    _expect(isinstance(doc, dict), "request body must be a JSON object with an 'inputs' array")
    raw_inputs = doc.get("inputs")
    _expect(
        isinstance(raw_inputs, list) and len(raw_inputs) > 0,
        f"request must have a non-empty 'inputs' array; the model expects {describe_specs(inputs)}",
    )
    specs = {s.name: s for s in inputs}
    decoded: dict[str, np.ndarray] = {}
    for raw in raw_inputs:
        _expect(isinstance(raw, dict), "each entry of 'inputs' must be a JSON object")
        name = raw.get("name")
        _expect(isinstance(name, str), "each entry of 'inputs' needs a string 'name'")
        spec = specs.get(name)
        _expect(
            spec is not None,
            f"unknown input '{name}'; the model expects {describe_specs(inputs)}",
        )
        assert spec is not None
        _expect(name not in decoded, f"input '{name}' is given more than once")
        datatype = raw.get("datatype")
        _expect(
            datatype == spec.datatype,
            f"input '{name}': datatype {datatype!r} does not match the model's {spec.datatype}",
        )
        shape = _decode_shape(name, raw.get("shape"))
        _check_shape(spec, shape)
        _expect("data" in raw, f"input '{name}': 'data' is missing")
        decoded[name] = _decode_data(spec, shape, raw["data"])
    missing = [s.name for s in inputs if s.name not in decoded]
    _expect(not missing, f"missing input(s) {missing}; the model expects {describe_specs(inputs)}")

    request_id = doc.get("id")
    _expect(request_id is None or isinstance(request_id, str), "'id' must be a string")
    parameters = doc.get("parameters", {})
    _expect(isinstance(parameters, dict), "'parameters' must be a JSON object")
    return InferRequest(
        inputs={s.name: decoded[s.name] for s in inputs},
        request_id=request_id,
        outputs=_decode_output_selection(doc.get("outputs"), outputs),
        parameters=parameters,
    )


def _decode_output_selection(raw: Any, outputs: Sequence[TensorSpec]) -> list[str] | None:
    if raw is None:
        return None
    _expect(isinstance(raw, list), "'outputs' must be an array of {\"name\": ...} objects")
    known = {s.name for s in outputs}
    names: list[str] = []
    for entry in raw:
        name = entry.get("name") if isinstance(entry, dict) else None
        _expect(
            isinstance(name, str) and name in known,
            f"unknown output {name!r} requested; the model's outputs are {sorted(known)}",
        )
        names.append(str(name))
    return names


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    specs: Mapping[str, TensorSpec],
) -> bytes:
    """Encode outputs as a v2 JSON response; arrays are serialised by orjson directly."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [
        {
            "name": name,
            "datatype": specs[name].datatype,
            "shape": list(array.shape),
            "data": np.ascontiguousarray(array).reshape(-1),
        }
        for name, array in outputs.items()
    ]
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
