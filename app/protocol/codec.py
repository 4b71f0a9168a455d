"""Decode v2 inference requests into numpy arrays and encode responses: JSON tensors and the
binary tensor data extension (`Inference-Header-Content-Length`).

Validation happens here, once, against the model's input specs, so that a bad request is
answered 400 with a message naming the input and what was expected, before it is queued.
Error messages are built only when a check fails. JSON goes through orjson and responses
serialise numpy arrays directly; binary inputs are read zero-copy from the request body.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from app.dataplane.types import InferenceRequest
from app.errors import InvalidInputError
from app.protocol.binary import decode_binary_tensor, encode_binary_tensor
from app.tensors import V2_TO_NUMPY, TensorSpec

# An overflowing JSON number is found (below) by the cast and a sum, and refused: not worth
# a warning too.
warnings.filterwarnings("ignore", "overflow encountered in (cast|reduce)", RuntimeWarning)

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


def _fail(message: str) -> InvalidInputError:
    return InvalidInputError(message)


#: No tensor may declare more elements than this, even with a zero dimension among its dims
#: (numpy refuses shapes whose non-zero dims multiply past its index range).
MAX_ELEMENTS = 2**40


def _decode_shape(name: str, raw: Any) -> tuple[int, ...]:
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
                raise _fail(f"input '{name}': shape {raw} declares more than 2**40 elements")
            return tuple(raw)
    raise _fail(f"input '{name}': 'shape' must be a list of non-negative integers, got {raw!r}")


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    wanted = spec.shape
    if len(shape) == len(wanted):
        for w, g in zip(wanted, shape):  # noqa: B905 (lengths checked)
            if w >= 0 and w != g:
                break
        else:
            return
    raise _fail(
        f"input '{spec.name}': shape {list(shape)} does not match the model's "
        f"{list(spec.shape)} (-1 is any size)"
    )


def _decode_json_data(
    spec: TensorSpec, shape: tuple[int, ...], data: Any, may_hold_booleans: bool = True
) -> np.ndarray:
    """`data` as an array of the spec's datatype, exactly: a boolean where numbers belong,
    or a number the datatype cannot hold, is refused (numpy would take true as 1 and
    overflow 1e39 to infinity). `may_hold_booleans` False (the body has no `true` or
    `false` anywhere) skips looking for booleans."""
    if not isinstance(data, list):
        raise _fail(
            f"input '{spec.name}': 'data' must be a JSON array (flat or nested) of "
            f"{spec.datatype} values"
        )
    if spec.datatype == "BYTES":
        return _decode_json_bytes(spec, shape, data)
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise _fail(
            f"input '{spec.name}': 'data' is not a rectangular array of {spec.datatype} values"
        ) from None
    expected = math.prod(shape)
    if array.size != expected:
        raise _fail(
            f"input '{spec.name}': shape {list(shape)} needs {expected} values, 'data' has "
            f"{array.size}"
        )
    target = V2_TO_NUMPY[spec.datatype]
    if array.size and target.kind != "b" and may_hold_booleans and _holds_booleans(data):
        raise _fail(
            f"input '{spec.name}': 'data' holds boolean values, which are not valid {spec.datatype}"
        )
    if array.size and target.kind in "iu" and array.dtype.kind in "fO":
        # Integers beyond int64 (or mixed with small ones) make numpy choose float or object;
        # look at the values themselves so every valid UINT64 gets through, exactly.
        array = _exact_integers(spec, data, array.shape)
    if array.size:
        if array.dtype.kind not in _allowed_kinds(spec.datatype):
            raise _fail(
                f"input '{spec.name}': 'data' holds {_kind_name(array.dtype)} values, "
                f"which are not valid {spec.datatype}"
            )
        if target.kind == "f" and array.dtype.itemsize > target.itemsize:
            narrowed = array.astype(target).reshape(shape)
            _refuse_overflow(spec, narrowed)
            return narrowed
        if target.kind in "iu" and array.dtype != target:
            info = np.iinfo(target)  # type: ignore[type-var]
            if int(array.min()) < info.min or int(array.max()) > info.max:
                raise _fail(
                    f"input '{spec.name}': values out of range for {spec.datatype} "
                    f"[{info.min}, {info.max}]"
                )
    return array.astype(target, copy=False).reshape(shape)


def _refuse_overflow(spec: TensorSpec, array: np.ndarray) -> None:
    """JSON numbers are finite, so an infinity in `array` (of the datatype) is a number the
    datatype cannot hold; one sum finds any (a sum that overflows is looked at again)."""
    if (
        array.dtype.itemsize < 8
        and array.size
        and not math.isfinite(np.add.reduce(array, axis=None))
    ) and np.isinf(array).any():
        largest = float(np.finfo(array.dtype).max)
        raise _fail(
            f"input '{spec.name}': values out of range for {spec.datatype} "
            f"(at most {largest:.4g} in magnitude)"
        )


def _holds_booleans(data: list[Any]) -> bool:
    """True when a (nested) list holds a JSON boolean anywhere."""
    kinds = set(map(type, data))
    if bool in kinds:
        return True
    return list in kinds and any(_holds_booleans(item) for item in data if type(item) is list)


def _decode_json_bytes(spec: TensorSpec, shape: tuple[int, ...], data: list[Any]) -> np.ndarray:
    flat = np.array(data, dtype=object).ravel()
    expected = math.prod(shape)
    if flat.size != expected:
        raise _fail(
            f"input '{spec.name}': shape {list(shape)} needs {expected} values, 'data' has "
            f"{flat.size}"
        )
    if not all(isinstance(v, str) for v in flat):
        raise _fail(f"input '{spec.name}': BYTES 'data' must hold strings")
    return flat.reshape(shape)


def _exact_integers(spec: TensorSpec, data: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    flat = np.array(data, dtype=object).ravel().tolist()
    if not all(type(v) is int for v in flat):
        raise _fail(
            f"input '{spec.name}': 'data' holds float values, which are not valid {spec.datatype}"
        )
    info = np.iinfo(V2_TO_NUMPY[spec.datatype])  # type: ignore[type-var]
    if min(flat) < info.min or max(flat) > info.max:
        raise _fail(
            f"input '{spec.name}': values out of range for {spec.datatype} [{info.min}, {info.max}]"
        )
    return np.array(flat, dtype=V2_TO_NUMPY[spec.datatype]).reshape(shape)


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "U": "string"}.get(
        dtype.kind, "non-numeric"
    )


def _split_body(
    body: bytes | bytearray, header_length: int | None
) -> tuple[bytes | bytearray, memoryview | None]:
    if header_length is None:
        return body, None
    if not 0 < header_length <= len(body):
        raise _fail(
            f"Inference-Header-Content-Length {header_length} is outside the body's "
            f"{len(body)} bytes"
        )
    view = memoryview(body)
    return body[:header_length], view[header_length:]


def decode_infer_request(
    body: bytes | bytearray,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    header_length: int | None = None,
    reject_nonfinite: bool = False,
    input_sets: Sequence[tuple[str, ...]] = (),
) -> InferenceRequest:
    """Parse and validate a v2 request against the model's specs.

    Every input in `inputs` is required, unless `input_sets` lists the complete sets a
    request may give instead (raw text, or the token ids it becomes).

    `header_length` is the `Inference-Header-Content-Length` header: the body is then that
    many bytes of JSON followed by the binary data of the inputs that declare
    `parameters.binary_data_size`, in order.
    """
    header, binary = _split_body(body, header_length)
    # Booleans in numeric data are looked for value by value only when the body has any:
    # searching the bytes costs far less per byte than looking at each value.
    may_hold_booleans = b"true" in header or b"false" in header
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object with an 'inputs' array")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail(
            "request must have a non-empty 'inputs' array; the model expects "
            + describe_specs(inputs)
        )
    specs = {s.name: s for s in inputs}
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise _fail("each entry of 'inputs' must be a JSON object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise _fail("each entry of 'inputs' needs a string 'name'")
        spec = specs.get(name)
        if spec is None:
            raise _fail(f"unknown input '{name}'; the model expects {describe_specs(inputs)}")
        if name in decoded:
            raise _fail(f"input '{name}' is given more than once")
        datatype = raw.get("datatype")
        if datatype != spec.datatype:
            raise _fail(
                f"input '{name}': datatype {datatype!r} does not match the model's {spec.datatype}"
            )
        shape = _decode_shape(name, raw.get("shape"))
        _check_shape(spec, shape)
        size = _binary_size(name, raw.get("parameters"))
        if size is not None:
            if binary is None or offset + size > len(binary):
                raise _fail(
                    f"input '{name}': binary_data_size {size} runs past the binary data "
                    "(is Inference-Header-Content-Length set?)"
                )
            decoded[name] = decode_binary_tensor(spec, shape, binary[offset : offset + size])
            offset += size
        elif "data" in raw:
            decoded[name] = _decode_json_data(spec, shape, raw["data"], may_hold_booleans)
        else:
            raise _fail(f"input '{name}': 'data' is missing")
    if input_sets:
        if not any(decoded.keys() == set(names) for names in input_sets):
            choices = " or ".join(str(list(names)) for names in input_sets)
            raise _fail(f"give exactly one of these sets of inputs: {choices}; got {list(decoded)}")
    elif len(decoded) != len(specs):
        missing = [s.name for s in inputs if s.name not in decoded]
        raise _fail(f"missing input(s) {missing}; the model expects {describe_specs(inputs)}")
    if reject_nonfinite:
        _check_finite(decoded)
    if binary is not None and offset != len(binary):
        raise _fail(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims"
        )

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail("'id' must be a string")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _fail("'parameters' must be a JSON object")
    selected, binary_outputs = _decode_output_selection(
        doc.get("outputs"), outputs, parameters.get("binary_data_output") is True
    )
    if len(decoded) > 1:
        decoded = {s.name: decoded[s.name] for s in inputs if s.name in decoded}
    return InferenceRequest(
        inputs=decoded,
        parameters=parameters,
        outputs=selected,
        request_id=request_id,
        binary_outputs=binary_outputs,
    )


def _check_finite(inputs: Mapping[str, np.ndarray]) -> None:
    for name, array in inputs.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _fail(
                f"input '{name}': holds NaN or infinite values, which this model refuses "
                "(reject_nonfinite in its config)"
            )


def _binary_size(name: str, parameters: Any) -> int | None:
    if not parameters:
        return None
    if not isinstance(parameters, dict):
        raise _fail(f"input '{name}': 'parameters' must be a JSON object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise _fail(f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def _decode_output_selection(
    raw: Any, outputs: Sequence[TensorSpec], binary_default: bool
) -> tuple[list[str] | None, frozenset[str]]:
    """The outputs asked for (None: all) and which of them go back as binary data."""
    if raw is None:
        return None, frozenset(s.name for s in outputs) if binary_default else frozenset()
    if not isinstance(raw, list):
        raise _fail("'outputs' must be an array of {\"name\": ...} objects")
    known = {s.name for s in outputs}
    names: list[str] = []
    binary: set[str] = set()
    for entry in raw:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in known:
            raise _fail(
                f"unknown output {name!r} requested; the model's outputs are {sorted(known)}"
            )
        names.append(name)
        parameters = entry.get("parameters") or {}
        wants = parameters.get("binary_data") if isinstance(parameters, dict) else None
        if wants is True or (wants is None and binary_default):
            binary.add(name)
    return names, frozenset(binary)


class EncodedResponse(NamedTuple):
    """A response body; `header_length` is set when binary data follows the JSON header."""

    content: bytes
    header_length: int | None


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    specs: Mapping[str, TensorSpec],
    binary: Collection[str] = (),
) -> EncodedResponse:
    """Encode outputs as a v2 response: JSON arrays, or binary data for names in `binary`."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        datatype = specs[name].datatype
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            chunk = encode_binary_tensor(array, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif datatype == "BYTES":
            entry["data"] = [_text(v) for v in array.ravel().tolist()]
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        tensors.append(entry)
    doc["outputs"] = tensors
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *chunks]), len(header))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
