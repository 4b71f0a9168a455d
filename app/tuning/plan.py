"""The one rule: from measured points to how a model is served. Tuning at load and
`batchserve profile` both call `plan`, so a model is configured alike by either.

A pure function of the timing table, so that it can be tested on recorded or synthetic
tables and explained in a few lines (README "Profile a model"):

- **Target.** The latency target T is the one given, else max(10 x the best batch-1 compute
  latency, 5 ms): a request may take ten times what it takes alone, and below a few ms the
  server's own cost of a request would dominate whatever batching does.
- **Layout.** At saturation a request waits for about one batch (the one computing when it
  arrives) and computes in the next, so a batch may compute for T / 2. The instance layout
  (count x threads) is the one with the highest throughput at any batch within T / 2.
  Throughput above SERVING_CEILING_SPS does not count (past it the HTTP path, not compute,
  limits serving, so layouts above it tie), and a tie goes to fewer instances (fewer
  threads competing with the event loop).
- **Batch.** The batch the server forms is chosen among the layout's batches within T / 2
  (on a CPU with the default target, within BATCH_LATENCY_FLOOR_MS at least): those whose
  throughput, counting the server's own cost of a batch, is within BATCH_TOLERANCE of the
  best; the largest for one instance, the middle one for several (`serving_batch_size`).
- **Largest batch.** max_batch_size is the one the config fixes, else the batch on a CPU,
  and on a GPU (whose throughput grows with the batch far past a CPU's) the layout's
  largest batch within T / 2; never below AUTO_MAX_BATCH_SIZE, so a request the defaults
  accept stays accepted. The batch is its one preferred size where it is smaller.
- When even batch 1 takes more than T / 2 in every layout, no configuration meets T on this
  device: the lowest-latency layout is chosen, flagged so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.tuning.points import Layout, Point

#: Largest batch size profiled by default (as Triton's Model Analyzer's default search).
DEFAULT_MAX_BATCH_SIZE = 128
#: The max_batch_size of a model with a dynamic batch axis whose config is silent.
AUTO_MAX_BATCH_SIZE = 32
#: Length given to variable non-batch axes (token sequences) by default: the usual
#: max_length of sentence encoders, so the profile is of full-length inputs (the worst case).
DEFAULT_SEQUENCE_LENGTH = 128
#: Default target: this many times the best batch-1 compute latency ...
DEFAULT_TARGET_FACTOR = 10.0
#: ... but never below this (ms): under it, per-request HTTP and queue costs dominate.
DEFAULT_TARGET_FLOOR_MS = 5.0
#: Samples/s beyond which compute no longer limits a server: one server process's HTTP path
#: carries about 10,000 requests/s, and this leaves room for clients sending a few samples
#: per request.
SERVING_CEILING_SPS = 20_000.0
#: The server's own cost of one batch (hand-off, concatenation, answering its requests).
SERVING_COST_PER_BATCH_MS = 0.3
#: Share of the best served throughput within which a batch counts as near the best.
BATCH_TOLERANCE = 0.05
#: A served batch may compute this long on a CPU even where the default latency target is
#: tighter: a small CNN's few-millisecond target kept its batches so small that it served
#: markedly slower than in batches of 16.
BATCH_LATENCY_FLOOR_MS = 25.0


@dataclass(frozen=True)
class Plan:
    """How a model is served: its layout, the batch the server forms, its max_batch_size."""

    target_ms: float
    #: "given", or how the default was derived.
    target_source: str
    layout: Layout
    #: The largest batch; for a model that does not batch (a fixed batch axis), what the
    #: config fixes, kept as it is (None where it is silent).
    max_batch_size: int | None
    #: The batch the server forms when that many wait; None where the model does not batch.
    batch_size: int | None
    #: What config.toml's batching.preferred_batch_sizes says: the batch where it is smaller
    #: than max_batch_size.
    preferred_batch_sizes: list[int]
    #: The chosen batch's measured throughput and compute latency.
    throughput_sps: float
    latency_ms_p50: float
    meets_target: bool
    notes: list[str] = field(default_factory=list)
    #: The lone-request checks (app.tuning.low_load), CPU only: the layout's sessions spin,
    #: and a low-load-only instance of this many threads (None: none) joins them.
    spinning: bool = False
    low_load_threads: int | None = None
    low_load_spinning: bool = False


def default_target_ms(points: Sequence[Point]) -> float:
    """max(DEFAULT_TARGET_FACTOR x the best batch-1 (or smallest batch) latency, the floor)."""
    smallest = min(p.batch_size for p in points)
    best = min(p.latency_ms_p50 for p in points if p.batch_size == smallest)
    return max(DEFAULT_TARGET_FACTOR * best, DEFAULT_TARGET_FLOOR_MS)


def plan(
    points: Sequence[Point],
    *,
    batching: bool = True,
    device: str = "cpu",
    target_ms: float | None = None,
    max_batch_size: int | None = None,
    ceiling_sps: float = SERVING_CEILING_SPS,
) -> Plan:
    """The rule of the module docstring over `points`. `batching` False for a model whose
    batch axis is fixed (only the layout is chosen); `device` "cpu" or a GPU's ("cuda",
    "cuda:N"); `max_batch_size` what the config fixes (None: chosen here)."""
    if not points:
        raise ValueError("no measured points to plan from")
    if target_ms is None:
        target = default_target_ms(points)
        smallest = min(p.batch_size for p in points)
        source = (
            f"default: max({DEFAULT_TARGET_FACTOR:g} x batch-{smallest} latency, "
            f"{DEFAULT_TARGET_FLOOR_MS:g} ms)"
        )
    else:
        target, source = target_ms, "given"
    on_cpu = device == "cpu"
    bound = target / 2
    layout, meets_target, notes = _layout(points, bound, target, ceiling_sps)
    own = [p for p in points if p.layout == layout]
    if not batching:
        best = max(own, key=lambda p: p.throughput_sps)
        return Plan(
            target_ms=target, target_source=source, layout=layout, max_batch_size=max_batch_size,
            batch_size=None, preferred_batch_sizes=[], throughput_sps=best.throughput_sps,
            latency_ms_p50=best.latency_ms_p50, meets_target=meets_target, notes=notes,
        )  # fmt: skip
    floor = BATCH_LATENCY_FLOOR_MS if on_cpu and target_ms is None else 0.0
    served_within = [p for p in own if p.latency_ms_p50 <= max(bound, floor)]
    within = [p for p in own if p.latency_ms_p50 <= bound]
    largest = max((p.batch_size for p in within), default=min(p.batch_size for p in own))
    batch = serving_batch_size(served_within, layout.count) if served_within else largest
    if max_batch_size is None:
        max_batch_size = max(batch if on_cpu else largest, AUTO_MAX_BATCH_SIZE)
    batch = min(batch, max_batch_size)
    chosen = min(own, key=lambda p: (abs(p.batch_size - batch), p.batch_size))
    notes += _unsettled(own, layout, {batch, largest})
    return Plan(
        target_ms=target, target_source=source, layout=layout, max_batch_size=max_batch_size,
        batch_size=batch, preferred_batch_sizes=[batch] if batch < max_batch_size else [],
        throughput_sps=chosen.throughput_sps, latency_ms_p50=chosen.latency_ms_p50,
        meets_target=meets_target, notes=notes,
    )  # fmt: skip


def _layout(
    points: Sequence[Point], bound: float, target: float, ceiling_sps: float
) -> tuple[Layout, bool, list[str]]:
    """The layout with the highest throughput within `bound` (ties to fewer instances),
    whether any layout met it, and the note saying so where none did."""
    layouts = sorted({p.layout for p in points})
    within = {
        layout: [p for p in points if p.layout == layout and p.latency_ms_p50 <= bound]
        for layout in layouts
    }
    candidates = [layout for layout in layouts if within[layout]]
    if not candidates:
        fastest = min(points, key=lambda p: (p.batch_size, p.latency_ms_p50))
        note = (
            f"no layout computes batch {fastest.batch_size} within half the target "
            f"({bound:g} ms; the fastest takes {fastest.latency_ms_p50:.3g} ms): the target "
            f"of {target:g} ms cannot be met on this device; this is the lowest-latency "
            "configuration"
        )
        return fastest.layout, False, [note]

    def best(layout: Layout) -> float:
        return min(max(p.throughput_sps for p in within[layout]), ceiling_sps)

    return max(candidates, key=lambda c: (best(c), -c.count)), True, []


def _unsettled(own: Sequence[Point], layout: Layout, sizes: set[int]) -> list[str]:
    """A note where the points the plan rests on did not settle (an unsettled batch 1 does
    not matter when batch 64 is chosen)."""
    unstable = sorted(p.batch_size for p in own if not p.stable and p.batch_size in sizes)
    if not unstable:
        return []
    return [
        f"timings of {layout.label} batch {', '.join(map(str, unstable))} did not settle "
        "within 5% (a busy machine?): rerun when it is quiet before trusting close calls"
    ]


def serving_batch_size(points: Sequence[Point], instances: int = 1) -> int:
    """The batch the server should form, from one layout's compute profile: among the
    batches whose throughput, counting the server's fixed cost per batch, is within
    BATCH_TOLERANCE of the best, the largest for one instance and the middle one (the upper
    of two) for several. One instance has nobody to share a burst with, and a larger batch
    holds its throughput under any load. Several instances share a burst only if a batch
    leaves some for the others: in batches as large as the burst, one instance takes it
    all while the others wait. The smallest near batch is no safer: where compute per
    sample is flat, timing noise puts batch 1 within reach."""

    def served(point: Point) -> float:
        return point.batch_size / (point.latency_ms_p50 + SERVING_COST_PER_BATCH_MS)

    best = max(served(p) for p in points)
    near = sorted(p.batch_size for p in points if served(p) >= (1 - BATCH_TOLERANCE) * best)
    return near[-1] if instances == 1 else near[len(near) // 2]
