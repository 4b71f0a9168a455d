"""The v2 inference request as the REST codec decodes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
