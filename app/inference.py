"""One decoded inference request and its answer, whatever transport carried them: the
types every layer may use (codecs, the data plane, tuning's sample inputs), so none of them
imports a room above it for a dataclass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.tensors import TensorSpec


@dataclass(slots=True)
class InferenceRequest:
    """One decoded inference request, whatever transport carried it."""

    #: Named input arrays, checked against the model's specs (batch axis first).
    inputs: dict[str, np.ndarray]
    #: The v2 request's parameters: `timeout` (microseconds) and `priority` are read here.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Output names wanted, in the client's order; None: the model's default outputs.
    outputs: Sequence[str] | None = None
    request_id: str | None = None
    #: An absolute deadline the transport itself carries (a gRPC call's), in loop time.
    deadline: float | None = None
    #: Outputs the client wants in the transport's binary form (REST's binary tensor
    #: extension); the data plane passes them through to the transport's encoder.
    binary_outputs: frozenset[str] = frozenset()
    #: Outputs asked for as their top K classes (Triton's classification extension:
    #: an output's `parameters.classification = K`), by name.
    classification: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceResponse:
    """The outputs of one request, ready for the transport to encode."""

    model: str
    version: str
    request_id: str | None
    outputs: dict[str, np.ndarray]
    specs: Mapping[str, TensorSpec]
    binary_outputs: frozenset[str] = frozenset()
