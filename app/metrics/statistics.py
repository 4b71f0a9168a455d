"""Per-version counters in the shape of Triton's statistics extension.

GET /v2/models/{m}[/versions/{v}]/stats answers with these, so `tritonclient`'s
`get_inference_statistics` works against us. Plain integers: updated on the event loop only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


@dataclass(slots=True)
class Duration:
    """A count and a cumulative duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * NS)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchSizeStats:
    """Executions of one batch size: time to assemble, run and split them."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStatistics:
    """Triton's `model_stats` entry for one model version."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)

    def request_done(self, succeeded: bool, duration_s: float) -> None:
        (self.success if succeeded else self.fail).add(duration_s)
        self.last_inference_ms = int(time.time() * 1000)

    def batch_executed(
        self, samples: int, requests: int, input_s: float, compute_s: float, output_s: float
    ) -> None:
        """Triton attributes a batch's compute time to each request that rode in it."""
        self.inference_count += samples
        self.execution_count += 1
        self.compute_input.add(input_s * requests, requests)
        self.compute_infer.add(compute_s * requests, requests)
        self.compute_output.add(output_s * requests, requests)
        per_size = self.batches.get(samples)
        if per_size is None:
            per_size = self.batches[samples] = BatchSizeStats()
        per_size.compute_input.add(input_s)
        per_size.compute_infer.add(compute_s)
        per_size.compute_output.add(output_s)

    def as_dict(self) -> dict[str, Any]:
        zero = Duration().as_dict()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stats.compute_input.as_dict(),
                    "compute_infer": stats.compute_infer.as_dict(),
                    "compute_output": stats.compute_output.as_dict(),
                }
                for size, stats in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
