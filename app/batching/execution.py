"""Running one batch, in its worker's thread: assemble, execute, split back per request.

When the batch fails, it is bisected (in the same thread) until the requests that fail
alone are found: only those get the error, the others their outputs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.batching.padding import PaddingPlan
from app.batching.runner import BatchRunner

Outputs = dict[str, np.ndarray]


@dataclass(slots=True)
class BatchResult:
    """One entry per request: its outputs, or the exception that failed it."""

    outputs: list[Outputs | Exception]
    input_s: float = 0.0
    compute_s: float = 0.0
    output_s: float = 0.0
    positions: int = 0
    padding_positions: int = 0
    #: Samples the runner added to reach one of its fixed batch sizes (CUDA graphs).
    padding: int = 0

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(
            self.outputs + other.outputs,
            self.input_s + other.input_s,
            self.compute_s + other.compute_s,
            self.output_s + other.output_s,
            self.positions + other.positions,
            self.padding_positions + other.padding_positions,
            self.padding + other.padding,
        )


def execute(
    runner: BatchRunner,
    requests: Sequence[dict[str, np.ndarray]],
    *,
    batches: bool,
    padding: PaddingPlan | None,
    lengths: Sequence[int],
) -> BatchResult:
    """Run `requests` as one batch; `lengths` are their lengths along the padded axis
    (measured when they were queued; 0 without padding)."""
    try:
        return _execute_once(runner, requests, batches, padding, lengths)
    except Exception as exc:
        if len(requests) == 1:
            return BatchResult([exc])
    middle = len(requests) // 2
    left = execute(
        runner, requests[:middle], batches=batches, padding=padding, lengths=lengths[:middle]
    )
    right = execute(
        runner, requests[middle:], batches=batches, padding=padding, lengths=lengths[middle:]
    )
    return left + right


def _execute_once(
    runner: BatchRunner,
    requests: Sequence[dict[str, np.ndarray]],
    batches: bool,
    padding: PaddingPlan | None,
    lengths: Sequence[int],
) -> BatchResult:
    started = time.perf_counter()
    counts = [next(iter(r.values())).shape[0] for r in requests]
    positions = sum(n * length for n, length in zip(counts, lengths, strict=True))
    if len(requests) == 1:
        feeds = requests[0]
    elif padding is not None:
        feeds = padding.assemble(requests, lengths)
    else:
        feeds = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
    total = sum(counts)
    batch_positions = total * max(lengths, default=0)
    assembled = time.perf_counter()
    outputs = runner.run(feeds)
    computed = time.perf_counter()
    # A runner with fixed batch sizes (BatchRunner.padded_size) pads the batch up to one.
    padded_size = getattr(runner, "padded_size", None)
    added = padded_size(total) - total if padded_size is not None and batches else 0
    if len(requests) == 1:
        return BatchResult(
            [outputs], assembled - started, computed - assembled, 0.0, positions, 0, added
        )
    assert batches, "only batching models run several requests at once"
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RuntimeError(
                f"output '{name}' has shape {list(array.shape)}, expected the batch axis "
                f"({total}) first"
            )
    bounds = np.cumsum(counts)[:-1]
    split = {name: np.split(array, bounds) for name, array in outputs.items()}
    per_request = [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))]
    if padding is not None:
        per_request = [
            padding.cut_back(outputs, length)
            for outputs, length in zip(per_request, lengths, strict=True)
        ]
    results: list[Outputs | Exception] = list(per_request)
    return BatchResult(
        results,
        assembled - started,
        computed - assembled,
        time.perf_counter() - computed,
        batch_positions,
        batch_positions - positions,
        added,
    )
