"""Variable-length batching: pad requests of different lengths into one batch, cut back after.

A model whose inputs have a variable non-batch axis (a sequence of tokens) would otherwise
batch only requests of exactly equal length, which with real traffic means batches of one.
With a padding plan, requests whose lengths differ share a batch: each padded input is
filled up to the longest request in the batch with its pad value (0 for ids and masks), and
the outputs that share that axis (the same symbolic dim name in the graph, or named in the
config) are cut back to each request's own length, so every request gets what it would have
got alone (the model masking its padding, as attention models do).

Batches are chosen so that padding stays bounded: the oldest request always goes first, and
the queued requests closest to it in length join it while padded positions stay within
`max_ratio` of the batch's positions (length bucketing around the head, with no bucket edges
to tune; a request passed over keeps its place and leads a batch of its own once it is the
oldest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import InvalidInputError

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class PaddedInput:
    """One input padded along `axis` with `value`."""

    name: str
    axis: int
    value: float


@dataclass(frozen=True, slots=True)
class PaddingPlan:
    """Which inputs pad along which axis, which outputs to cut back, and the waste ceiling."""

    inputs: tuple[PaddedInput, ...]
    #: Output name -> the axis cut back to each request's own length.
    outputs: dict[str, int]
    #: Padded positions / all positions of a batch stay at or below this.
    max_ratio: float = 0.25

    def length(self, inputs: dict[str, np.ndarray]) -> int:
        """The request's length along the padded axis (its padded inputs must agree)."""
        lengths = {p.name: inputs[p.name].shape[p.axis] for p in self.inputs}
        length = next(iter(lengths.values()))
        if any(value != length for value in lengths.values()):
            raise InvalidInputError(
                f"inputs disagree on their variable-length axis: {lengths}; the padded inputs "
                "of one request must all have the same length"
            )
        return int(length)

    def group_shapes(self, inputs: dict[str, np.ndarray]) -> tuple[tuple[int, ...], ...]:
        """Non-batch shapes with the padded axis blanked (-1), so that requests differing
        only in length share a shape group."""
        axes = {p.name: p.axis for p in self.inputs}
        shapes = []
        for name, array in inputs.items():
            shape = list(array.shape[1:])
            axis = axes.get(name)
            if axis is not None:
                shape[axis - 1] = -1
            shapes.append(tuple(shape))
        return tuple(shapes)

    def assemble(
        self, requests: Sequence[dict[str, np.ndarray]], lengths: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """One batch: padded inputs filled up to the longest request, the others concatenated."""
        longest = max(lengths)
        padded = {p.name: p for p in self.inputs}
        feeds = {}
        for name in requests[0]:
            parts = [r[name] for r in requests]
            plan = padded.get(name)
            if plan is None or all(length == longest for length in lengths):
                feeds[name] = np.concatenate(parts)
                continue
            first = parts[0]
            shape = list(first.shape)
            shape[0] = sum(part.shape[0] for part in parts)
            shape[plan.axis] = longest
            batch = np.full(shape, plan.value, dtype=first.dtype)
            row = 0
            for part in parts:
                index: list[slice] = [slice(None)] * batch.ndim
                index[0] = slice(row, row + part.shape[0])
                index[plan.axis] = slice(0, part.shape[plan.axis])
                batch[tuple(index)] = part
                row += part.shape[0]
            feeds[name] = batch
        return feeds

    def cut_back(self, outputs: Outputs, length: int) -> Outputs:
        """One request's outputs with the padded axis cut back to its own `length`."""
        for name, axis in self.outputs.items():
            array = outputs.get(name)
            if array is not None and array.shape[axis] != length:
                index: list[slice] = [slice(None)] * array.ndim
                index[axis] = slice(0, length)
                outputs[name] = array[tuple(index)]
        return outputs


def choose_by_length(
    candidates: Sequence[tuple[int, int]], limit: int, max_ratio: float
) -> list[int]:
    """Indices into `candidates` ((length, samples) pairs, oldest first) of one batch: the
    first (oldest) always, then, greedily, whichever of the next shorter and the next longer
    candidate adds less padding, while the batch stays within `limit` samples and `max_ratio`
    padding. Neighbours in length pack best: a batch's cost is its longest times its size."""
    head_length, head_samples = candidates[0]
    order = sorted(range(1, len(candidates)), key=lambda i: candidates[i][0])
    split = sum(1 for i in order if candidates[i][0] <= head_length)
    shorter, longer = split - 1, split  # next candidates below and above, in `order`
    chosen = [0]
    samples, positions, longest = head_samples, head_length * head_samples, head_length

    def waste_with(i: int) -> float | None:
        length, n = candidates[i]
        if samples + n > limit:
            return None
        grown = max(longest, length)
        waste = 1.0 - (positions + length * n) / ((samples + n) * grown)
        return waste if waste <= max_ratio + 1e-12 else None

    while samples < limit:
        below = waste_with(order[shorter]) if shorter >= 0 else None
        above = waste_with(order[longer]) if longer < len(order) else None
        if below is None and above is None:
            break
        if above is None or (below is not None and below <= above):
            pick, shorter = order[shorter], shorter - 1
        else:
            pick, longer = order[longer], longer + 1
        length, n = candidates[pick]
        chosen.append(pick)
        samples, positions, longest = samples + n, positions + length * n, max(longest, length)
    return chosen
