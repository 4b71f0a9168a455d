"""Hooks through which the batcher reports what it does (implemented by app.metrics)."""

from __future__ import annotations

from collections.abc import Sequence


class BatchObserver:
    """Receives the batcher's events; this base class ignores them all."""

    def queue_depth(self, depth: int) -> None:
        """Requests now waiting in the queue."""

    def request_cancelled(self) -> None:
        """A queued request was dropped before compute because its caller went away."""

    def batch_executed(
        self,
        runner: str,
        device: str,
        samples: int,
        compute_s: float,
        queue_waits_s: Sequence[float],
        failed: bool,
    ) -> None:
        """One execution ran on `runner`; `queue_waits_s` has one entry per request in it."""
