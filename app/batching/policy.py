"""What a model's config tells the batcher."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.batching.padding import PaddingPlan
from app.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How requests of one model version are grouped into executions.

    `max_batch_size` counts samples along the batch axis; 0 means the model does not batch and
    each request runs alone, as sent. `max_queue_delay_s` > 0 lets a batch below the target
    size wait for more, at most that long after its OLDEST request arrived.
    """

    max_batch_size: int
    #: Requests that may wait in the queue; beyond it, new ones are answered 429.
    max_queue_size: int
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    #: Priority levels 1 (highest) .. priority_levels; requests naming none get the default.
    priority_levels: int = 1
    default_priority: int = 1
    #: Bytes of input tensors that may wait in the queue (None: no limit). The request that
    #: finds the queue empty is always admitted, so one large request is never starved.
    max_queue_bytes: int | None = None
    #: Samples that may wait in the queue (None: no limit beyond max_queue_size requests);
    #: queued samples over throughput is the wait a new request should expect.
    max_queue_samples: int | None = None
    #: Variable-length batching (app.batching.padding); None: only equal shapes share a batch.
    padding: PaddingPlan | None = None
    #: Latency-target batching (app.batching.latency): batch sizes, waits and shedding chosen
    #: to keep queue wait + compute under this; replaces max_queue_delay_s.
    latency_target_s: float | None = None

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    @property
    def target_batch_size(self) -> int:
        """The size worth waiting for when a queue delay is set."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)

    def take_limit(self, pending_samples: int) -> int:
        """Samples to take now: the largest preferred size that can be formed, else the max."""
        fitting = [p for p in self.preferred_batch_sizes if p <= pending_samples]
        return max(fitting) if fitting else self.max_batch_size

    def request_shape(
        self, model: str, inputs: dict[str, np.ndarray]
    ) -> tuple[int, tuple[tuple[int, ...], ...], int]:
        """A request's samples, its shape-group key and its length along the padded axis;
        InvalidInputError when it cannot be batched as sent."""
        if not self.batches:
            return 1, (), 0
        sizes = {name: array.shape[0] for name, array in inputs.items()}
        samples = next(iter(sizes.values()))
        if any(size != samples for size in sizes.values()):
            raise InvalidInputError(
                f"inputs disagree on the batch size (first axis): {sizes}; every input of "
                "one request must have the same number of samples"
            )
        if samples < 1:
            raise InvalidInputError("a request needs at least one sample (first axis >= 1)")
        if samples > self.max_batch_size:
            raise InvalidInputError(
                f"request has {samples} samples but model '{model}' accepts at most "
                f"{self.max_batch_size} per request (max_batch_size); split it"
            )
        padding = self.padding
        if padding is not None:
            return samples, padding.group_shapes(inputs), padding.length(inputs)
        return samples, tuple(array.shape[1:] for array in inputs.values()), 0

    def level(self, model: str, priority: int | None) -> int:
        """The priority level of a request asking for `priority` (None or 0: the default)."""
        if priority is None or priority == 0:
            return self.default_priority
        if not 1 <= priority <= self.priority_levels:
            raise InvalidInputError(
                f"priority {priority} is out of range: model '{model}' has priority levels "
                f"1 (highest) to {self.priority_levels}; 0 or none means its default, "
                f"{self.default_priority}"
            )
        return priority
