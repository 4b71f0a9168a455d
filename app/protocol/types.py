"""Plain data types of the v2 protocol after decoding, shared by the codec and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: inputs as numpy arrays, in the model's input order."""

    inputs: dict[str, np.ndarray]
    request_id: str | None = None
    #: Output names the client asked for, in its order; None means all of the model's outputs.
    outputs: list[str] | None = None
    #: Outputs to send back as binary data (binary tensor extension) rather than JSON.
    binary_outputs: frozenset[str] = frozenset()
    parameters: dict[str, Any] = field(default_factory=dict)
