"""Tensor specs and datatype maps: the vocabulary every layer shares.

The v2 protocol's datatype names (FP32, INT64, BYTES, ...) are the names used throughout; this
module maps them to numpy dtypes, to ONNX Runtime's type strings and to Triton's model
configuration names, so the runtime, the repository and the transports agree without
importing one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output as the v2 metadata shows it.

    `shape` includes the batch axis as -1 when the model batches; -1 marks any variable axis.
    `dim_names` keeps the ONNX graph's symbolic names (None where fixed or unnamed), so axes
    that share a name can be matched across inputs and outputs.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = ()
    #: BYTES elements are opaque bytes (encoded images), not UTF-8 text: decoders keep them
    #: as `bytes`, and JSON carries them base64-encoded.
    opaque: bool = False
    #: One element per sample (shape [batch]): a request may also send it as [batch, 1],
    #: as clients of Triton do, whose configs must declare it as dims [1] reshaped to [].
    one_per_sample: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


#: v2 datatype name -> numpy dtype (little-endian, as the binary extension requires).
V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),  # elements are str (UTF-8 on the wire)
}

#: ONNX Runtime's type strings (NodeArg.type) -> v2 datatype name.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype for a v2 datatype (object for BYTES); KeyError for unknown names."""
    return V2_TO_NUMPY[datatype]


def triton_data_type(datatype: str) -> str:
    """Triton's model configuration name of a v2 datatype: TYPE_FP32, ..., TYPE_STRING."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def fixed_batch_input(specs: Sequence[TensorSpec]) -> TensorSpec | None:
    """The first input whose first axis is fixed (or a scalar), or None: a model batches
    only where every input's first axis is dynamic."""
    return next((spec for spec in specs if not spec.shape or spec.shape[0] >= 0), None)
