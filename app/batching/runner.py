"""The interface between the batcher and whatever executes a batch (runtime.OnnxInstance)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BatchRunner(Protocol):
    """Executes one batch synchronously; the batcher calls it from a thread of its own."""

    @property
    def label(self) -> str:
        """Names the worker in metrics and logs, e.g. `cpu/0`."""
        ...

    @property
    def device(self) -> str:
        """`cpu` or `cuda:N`."""
        ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on a batch; every output keeps the batch axis first.

        A runner that only runs fixed batch sizes (CUDA graphs) pads the batch up to one and
        cuts the outputs back; it may then also offer `padded_size(samples) -> int`, the
        size a batch of `samples` really runs at, which the batcher reports as padding."""
        ...
