"""Hooks through which the batcher reports what it does (implemented by app.metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchReport:
    """One execution: who ran it, how big it was, and where its time went."""

    runner: str
    device: str
    samples: int
    #: Samples the batcher added to reach an allowed size (never returned to clients).
    padding: int
    #: One entry per request in the batch: its time in the queue.
    queue_waits_s: Sequence[float]
    #: Assembling the batch (concatenation), running the model, splitting the outputs.
    input_s: float
    compute_s: float
    output_s: float
    #: Samples of requests that failed (the batch was bisected to find them).
    failed_samples: int = 0
    #: Variable-length batching: positions along the padded axis in the batch, and how many
    #: of them were padding (computed, then cut away).
    positions: int = 0
    padding_positions: int = 0

    @property
    def requests(self) -> int:
        return len(self.queue_waits_s)

    @property
    def succeeded_samples(self) -> int:
        return self.samples - self.failed_samples


class BatchObserver:
    """Receives the batcher's events; this base class ignores them all."""

    def workers_started(self, workers: Sequence[tuple[str, str]]) -> None:
        """The batcher's workers as (label, device) pairs, once, when it starts."""

    def queue_depth(self, depth: int) -> None:
        """Requests now waiting in the queue."""

    def batch_executed(self, report: BatchReport) -> None:
        """One execution finished (or failed)."""

    def decided(self, decision: str) -> None:
        """Latency-target batching chose: `now` (a batch taken at once), `waited` (taken after
        waiting for a fuller one), `shed` (a request refused on arrival to keep the target) or
        `late` (a queued request refused when its turn came too late to make the target)."""

    def latency_model(self, worker: str, fixed_s: float, per_sample_s: float) -> None:
        """A worker's fitted batch time, t(n) = fixed_s + per_sample_s * n."""

    def shed_threshold(self, expected_s: float) -> None:
        """Latency-target batching refuses requests expected to take longer than this."""
