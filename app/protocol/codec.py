"""Decode v2 inference requests into numpy arrays and encode responses: JSON tensors and the
binary tensor data extension (`Inference-Header-Content-Length`).

Validation happens here, once, against the model's input specs, so that a bad request is
answered 400 with a message naming the input and what was expected, before it is queued.
Error messages are built only when a check fails. JSON goes through orjson and responses
serialise numpy arrays directly; binary inputs are read zero-copy from the request body.
"""

from __future__ import annotations

import base64
import binascii
import math
import mmap
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from app.inference import InferenceRequest
from app.protocol.binary import decode_binary_tensor, encode_binary_tensor
from app.protocol.checks import (
    check_output,
    check_shape,
    classification_count,
    complete_inputs,
    decode_shape,
    describe_specs,
    fail,
    input_spec,
)
from app.tensors import V2_TO_NUMPY, TensorSpec

#: A request body as a transport holds it: large ones arrive in an anonymous memory map.
RequestBody = bytes | bytearray | mmap.mmap

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


def _decode_json_data(
    spec: TensorSpec, shape: tuple[int, ...], data: Any, may_hold_booleans: bool = True
) -> np.ndarray:
    """`data` as an array of the spec's datatype, exactly: a boolean where numbers belong,
    or a number the datatype cannot hold, is refused (numpy would take true as 1 and
    overflow 1e39 to infinity). `may_hold_booleans` False (the body has no `true` or
    `false` anywhere) skips looking for booleans."""
    if not isinstance(data, list):
        raise fail(
            f"input '{spec.name}': 'data' must be a JSON array (flat or nested) of "
            f"{spec.datatype} values"
        )
    if spec.datatype == "BYTES":
        return _decode_json_bytes(spec, shape, data)
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise fail(
            f"input '{spec.name}': 'data' is not a rectangular array of {spec.datatype} values"
        ) from None
    expected = math.prod(shape)
    if array.size != expected:
        raise fail(
            f"input '{spec.name}': shape {list(shape)} needs {expected} values, 'data' has "
            f"{array.size}"
        )
    target = V2_TO_NUMPY[spec.datatype]
    if array.size and target.kind != "b" and may_hold_booleans and _holds_booleans(data):
        raise fail(
            f"input '{spec.name}': 'data' holds boolean values, which are not valid {spec.datatype}"
        )
    if array.size and target.kind in "iu" and array.dtype.kind in "fO":
        # Integers beyond int64 (or mixed with small ones) make numpy choose float or object;
        # look at the values themselves so every valid UINT64 gets through, exactly.
        array = _exact_integers(spec, data, array.shape)
    if array.size:
        if array.dtype.kind not in _allowed_kinds(spec.datatype):
            raise fail(
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
                raise fail(
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
        raise fail(
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
        raise fail(
            f"input '{spec.name}': shape {list(shape)} needs {expected} values, 'data' has "
            f"{flat.size}"
        )
    if not all(isinstance(v, str) for v in flat):
        raise fail(f"input '{spec.name}': BYTES 'data' must hold strings")
    if spec.opaque:  # files (images) travel base64-encoded in JSON
        try:
            flat = np.array(
                [base64.b64decode(v, validate=True) for v in flat.tolist()], dtype=object
            )
        except (binascii.Error, ValueError) as exc:
            raise fail(
                f"input '{spec.name}': in JSON its elements are files, base64-encoded; "
                f"one is not valid base64 ({exc}). Or send the bytes with the binary data "
                "extension"
            ) from None
    return flat.reshape(shape)


def _exact_integers(spec: TensorSpec, data: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    flat = np.array(data, dtype=object).ravel().tolist()
    if not all(type(v) is int for v in flat):
        raise fail(
            f"input '{spec.name}': 'data' holds float values, which are not valid {spec.datatype}"
        )
    info = np.iinfo(V2_TO_NUMPY[spec.datatype])  # type: ignore[type-var]
    if min(flat) < info.min or max(flat) > info.max:
        raise fail(
            f"input '{spec.name}': values out of range for {spec.datatype} [{info.min}, {info.max}]"
        )
    return np.array(flat, dtype=V2_TO_NUMPY[spec.datatype]).reshape(shape)


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "U": "string"}.get(
        dtype.kind, "non-numeric"
    )


def _split_body(
    body: RequestBody, header_length: int | None
) -> tuple[RequestBody, memoryview | None]:
    if header_length is None:
        return body, None
    if not 0 < header_length <= len(body):
        raise fail(
            f"Inference-Header-Content-Length {header_length} is outside the body's "
            f"{len(body)} bytes"
        )
    view = memoryview(body)
    return body[:header_length], view[header_length:]


def decode_infer_request(
    body: RequestBody,
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
    # (find, not `in`: a memory map's `in` looks for one byte.)
    may_hold_booleans = header.find(b"true") >= 0 or header.find(b"false") >= 0
    try:
        doc = orjson.loads(memoryview(header) if isinstance(header, mmap.mmap) else header)
    except orjson.JSONDecodeError as exc:
        raise fail(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise fail("request body must be a JSON object with an 'inputs' array")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise fail(
            "request must have a non-empty 'inputs' array; the model expects "
            + describe_specs(inputs)
        )
    specs = {s.name: s for s in inputs}
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise fail("each entry of 'inputs' must be a JSON object")
        spec = input_spec(specs, inputs, decoded, raw.get("name"), raw.get("datatype"))
        name = spec.name
        shape = decode_shape(name, raw.get("shape"))
        model_shape = check_shape(spec, shape)
        size = _binary_size(name, raw.get("parameters"))
        if size is not None:
            if binary is None or offset + size > len(binary):
                raise fail(
                    f"input '{name}': binary_data_size {size} runs past the binary data "
                    "(is Inference-Header-Content-Length set?)"
                )
            decoded[name] = decode_binary_tensor(spec, shape, binary[offset : offset + size])
            offset += size
        elif "data" in raw:
            decoded[name] = _decode_json_data(spec, shape, raw["data"], may_hold_booleans)
        else:
            raise fail(f"input '{name}': 'data' is missing")
        if model_shape is not shape:
            decoded[name] = decoded[name].reshape(model_shape)
    decoded = complete_inputs(decoded, inputs, input_sets, reject_nonfinite)
    if binary is not None and offset != len(binary):
        raise fail(f"the body has {len(binary) - offset} bytes of binary data that no input claims")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise fail("'id' must be a string")
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise fail("'parameters' must be a JSON object")
    selected, binary_outputs, classification = _decode_output_selection(
        doc.get("outputs"), outputs, parameters.get("binary_data_output") is True
    )
    return InferenceRequest(
        inputs=decoded,
        parameters=parameters,
        outputs=selected,
        request_id=request_id,
        binary_outputs=binary_outputs,
        classification=classification,
    )


def _binary_size(name: str, parameters: Any) -> int | None:
    if not parameters:
        return None
    if not isinstance(parameters, dict):
        raise fail(f"input '{name}': 'parameters' must be a JSON object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise fail(f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def _decode_output_selection(
    raw: Any, outputs: Sequence[TensorSpec], binary_default: bool
) -> tuple[list[str] | None, frozenset[str], dict[str, int]]:
    """The outputs asked for (None: all), which of them go back as binary data, and which
    as their top classes."""
    if raw is None:
        every = frozenset(s.name for s in outputs) if binary_default else frozenset()
        return None, every, {}
    if not isinstance(raw, list):
        raise fail("'outputs' must be an array of {\"name\": ...} objects")
    known = {s.name for s in outputs}
    names: list[str] = []
    binary: set[str] = set()
    classification: dict[str, int] = {}
    for entry in raw:
        name = check_output(entry.get("name") if isinstance(entry, dict) else None, known)
        names.append(name)
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise fail(f"output '{name}': 'parameters' must be a JSON object")
        wants = parameters.get("binary_data")
        if wants is True or (wants is None and binary_default):
            binary.add(name)
        if "classification" in parameters:
            classification[name] = classification_count(name, parameters["classification"])
    return names, frozenset(binary), classification


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
