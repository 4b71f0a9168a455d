"""From measured points to a serving configuration: the recommendation rule.

A pure function of the timing table, so that it can be tested on synthetic tables and
explained in a few lines (README "Profile a model"):

- **Target.** The latency target T is the one given, else max(10 x the best batch-1 compute
  latency, 5 ms): a request may take ten times what it takes alone, and below a few ms the
  HTTP path (about 0.5 ms a request here) would dominate whatever batching does.
- **Largest batch.** At saturation a request waits for about one batch (the one being
  computed when it arrives) and then computes in the next, so a batch may take at most T / 2:
  for each layout, max_batch_size is the largest measured batch whose median compute latency
  is at most T / 2.
- **Layout.** The instance layout (count x threads) is the one with the highest throughput at
  any batch size within that bound; its bound sets max_batch_size. Throughput above
  SERVING_CEILING_SPS does not count: past it the HTTP path, not compute, limits serving,
  so layouts above it tie, and a tie goes to fewer instances (fewer threads competing with
  the event loop). Measured on digits, whose 2x1 layout computes twice what 1x2 does but
  whose served throughput was 10% lower with it.
- **Preferred sizes.** The batch sizes within that bound whose throughput is within
  `tolerance` (3%) of the layout's best: a free worker forms the largest of them the queue
  allows, so batches avoid the sizes that compute less efficiently.
- When even batch 1 takes more than T / 2 in every layout, no configuration meets T on this
  device: the lowest-latency layout at the smallest batch is recommended, flagged so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Largest batch size profiled by default (as Triton's Model Analyzer's default search).
DEFAULT_MAX_BATCH_SIZE = 128
#: Length given to variable non-batch axes (token sequences) by default: the usual
#: max_length of sentence encoders, so the profile is of full-length inputs (the worst case).
DEFAULT_SEQUENCE_LENGTH = 128
#: Default target: this many times the best batch-1 compute latency ...
DEFAULT_TARGET_FACTOR = 10.0
#: ... but never below this (ms): under it, per-request HTTP and queue costs dominate.
DEFAULT_TARGET_FLOOR_MS = 5.0
#: Share of the best throughput within which a batch size counts as preferred.
PREFERRED_TOLERANCE = 0.03
#: Samples/s beyond which compute no longer limits a server: one server process's HTTP path
#: carries about 10,000 requests/s (a constant endpoint on the same stack, README "Speed"),
#: and this leaves room for clients sending a few samples per request.
SERVING_CEILING_SPS = 20_000.0


@dataclass(frozen=True, order=True)
class Layout:
    """`count` instances (sessions) of `threads` intra-op threads each on one device."""

    count: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.count}x{self.threads}"

    @staticmethod
    def parse(text: str) -> Layout:
        """ "2x1" -> Layout(count=2, threads=1)."""
        try:
            count, threads = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"{text!r} is not COUNTxTHREADS, e.g. 2x1") from None
        if count < 1 or threads < 1:
            raise ValueError(f"{text!r}: count and threads must be at least 1")
        return Layout(count, threads)


@dataclass(frozen=True)
class Point:
    """One measured (layout, batch size): compute latency of a batch and the aggregate
    throughput of the layout's instances running at once."""

    layout: Layout
    batch_size: int
    latency_ms_p50: float
    latency_ms_p90: float
    throughput_sps: float
    #: Windows timed, and whether their last three throughputs agreed (app.timing).
    windows: int = 3
    stable: bool = True


@dataclass(frozen=True)
class Recommendation:
    target_ms: float
    #: "given", or how the default was derived.
    target_source: str
    layout: Layout
    #: None for a model that does not batch (a fixed batch axis): leave it as it is.
    max_batch_size: int | None
    preferred_batch_sizes: list[int]
    #: Best throughput of the layout within the bound, and its batch's compute latency.
    throughput_sps: float
    latency_ms_p50: float
    meets_target: bool
    notes: list[str] = field(default_factory=list)
    #: The lone-request checks (app.repository.low_load), CPU only: the layout's sessions
    #: spin, and a low-load-only instance of this many threads (None: none) joins them.
    spinning: bool = False
    low_load_threads: int | None = None
    low_load_spinning: bool = False


def default_target_ms(points: Sequence[Point]) -> float:
    """max(DEFAULT_TARGET_FACTOR x the best batch-1 (or smallest batch) latency, the floor)."""
    smallest = min(p.batch_size for p in points)
    best = min(p.latency_ms_p50 for p in points if p.batch_size == smallest)
    return max(DEFAULT_TARGET_FACTOR * best, DEFAULT_TARGET_FLOOR_MS)


def recommend(
    points: Sequence[Point],
    target_ms: float | None = None,
    batching: bool = True,
    tolerance: float = PREFERRED_TOLERANCE,
    ceiling_sps: float = SERVING_CEILING_SPS,
) -> Recommendation:
    """The rule of the module docstring over `points`; `batching` False for a model whose
    batch axis is fixed (only the layout is chosen)."""
    if not points:
        raise ValueError("no measured points to recommend from")
    if target_ms is None:
        target = default_target_ms(points)
        smallest = min(p.batch_size for p in points)
        source = (
            f"default: max({DEFAULT_TARGET_FACTOR:g} x batch-{smallest} latency, "
            f"{DEFAULT_TARGET_FLOOR_MS:g} ms)"
        )
    else:
        target, source = target_ms, "given"
    bound = target / 2
    layouts = sorted({p.layout for p in points})
    within = {
        layout: [p for p in points if p.layout == layout and p.latency_ms_p50 <= bound]
        for layout in layouts
    }
    candidates = [layout for layout in layouts if within[layout]]
    if not candidates:
        fastest = min(points, key=lambda p: (p.batch_size, p.latency_ms_p50))
        return Recommendation(
            target_ms=target,
            target_source=source,
            layout=fastest.layout,
            max_batch_size=fastest.batch_size if batching else None,
            preferred_batch_sizes=[],
            throughput_sps=fastest.throughput_sps,
            latency_ms_p50=fastest.latency_ms_p50,
            meets_target=False,
            notes=[
                f"no layout computes batch {fastest.batch_size} within half the target "
                f"({bound:g} ms; the fastest takes {fastest.latency_ms_p50:.3g} ms): the "
                f"target of {target:g} ms cannot be met on this device; this is the "
                "lowest-latency configuration"
            ],
        )

    def best_of(layout: Layout) -> Point:
        return max(within[layout], key=lambda p: p.throughput_sps)

    # Highest throughput up to the ceiling wins; on a tie, fewer instances (less contention
    # with the event loop, less memory).
    layout = max(candidates, key=lambda c: (min(best_of(c).throughput_sps, ceiling_sps), -c.count))
    best = best_of(layout)
    largest = max(p.batch_size for p in within[layout])
    preferred = sorted(
        p.batch_size
        for p in within[layout]
        if p.throughput_sps >= (1 - tolerance) * best.throughput_sps
    )
    notes = []
    # Only the points the recommendation rests on: an unsettled batch 1 does not matter
    # when batch 64 is chosen.
    unstable = [
        p
        for p in within[layout]
        if not p.stable and (p.batch_size in preferred or p.batch_size == largest)
    ]
    if unstable:
        sizes = ", ".join(str(p.batch_size) for p in unstable)
        notes.append(
            f"timings of {layout.label} batch {sizes} did not settle within 5% (a busy "
            "machine?): rerun when it is quiet before trusting close calls"
        )
    if not batching:
        return Recommendation(
            target_ms=target,
            target_source=source,
            layout=layout,
            max_batch_size=None,
            preferred_batch_sizes=[],
            throughput_sps=best.throughput_sps,
            latency_ms_p50=best.latency_ms_p50,
            meets_target=True,
            notes=notes,
        )
    return Recommendation(
        target_ms=target,
        target_source=source,
        layout=layout,
        max_batch_size=largest,
        preferred_batch_sizes=preferred,
        throughput_sps=best.throughput_sps,
        latency_ms_p50=best.latency_ms_p50,
        meets_target=True,
        notes=notes,
    )
