"""The binary tensor data extension's tensor layout: little-endian, row-major; BYTES as a
4-byte little-endian length before each element's bytes."""

from __future__ import annotations

import math
import struct

import numpy as np

from app.errors import InvalidInputError
from app.tensors import V2_TO_NUMPY, TensorSpec

_LENGTH = struct.Struct("<I")


def decode_binary_tensor(spec: TensorSpec, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    """A numpy view of `raw` (no copy unless the data is misaligned for its type)."""
    count = math.prod(shape)
    if spec.datatype == "BYTES":
        return _decode_bytes(spec, shape, raw, count)
    dtype = V2_TO_NUMPY[spec.datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input '{spec.name}': shape {list(shape)} of {spec.datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size is {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if not array.flags.aligned:
        array = array.copy()
    if spec.datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidInputError(f"input '{spec.name}': BOOL bytes must be 0 or 1")
    return array


def _decode_bytes(
    spec: TensorSpec, shape: tuple[int, ...], raw: memoryview, count: int
) -> np.ndarray:
    values: list[str | bytes] = []
    offset = 0
    try:
        for _ in range(count):
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise struct.error("element runs past the data")
            element = bytes(raw[offset : offset + length])
            values.append(element if spec.opaque else element.decode("utf-8"))
            offset += length
    except (struct.error, UnicodeDecodeError) as exc:
        kind = "elements" if spec.opaque else "UTF-8 strings"
        raise InvalidInputError(
            f"input '{spec.name}': BYTES data is not {count} length-prefixed {kind} ({exc})"
        ) from None
    if offset != len(raw):
        raise InvalidInputError(
            f"input '{spec.name}': {len(raw) - offset} bytes left after {count} BYTES elements"
        )
    array = np.empty(count, dtype=object)
    array[:] = values
    return array.reshape(shape)


def encode_binary_tensor(array: np.ndarray, datatype: str) -> bytes:
    """The bytes of one output tensor as the binary extension lays them out."""
    if datatype == "BYTES":
        parts = []
        for value in array.ravel().tolist():
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = V2_TO_NUMPY[datatype]
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
