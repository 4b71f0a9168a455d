"""Measure a model's compute per batch size and instance layout, as the server would run it.

Sessions are app.runtime.OnnxInstance, made exactly as the server makes them (providers,
intra-op threads, one inter-op thread, spinning off unless asked, full graph optimization),
so a layout of `count` x `threads` here is `[[instances]] count, threads` there. The
instances of a layout run at once, each from its own thread, as the server's workers do at
saturation, and the aggregate throughput is what they compute together
(app.tuning.timing.time_concurrent). Each (layout, batch size) is warmed up, then timed in windows
until the last three throughputs agree within 5% or its time is up (app.tuning.timing.until_stable).
Every point is measured twice by default, the second time in the reverse order, and keeps
its faster pass (see `profile`). Where every layout's sessions fit in memory at once, the
layouts are measured in turn at each batch size, not one after another: a busy spell of a
shared machine then slows them alike instead of deciding between them.

Blocking (ORT sessions): run it from a command or a thread, never from an event loop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.cores import available_cores
from app.errors import ModelLoadError
from app.runtime import InstanceOptions, OnnxInstance
from app.tensors import TensorSpec, numpy_dtype
from app.tuning.errors import TuningError
from app.tuning.plan import DEFAULT_TARGET_FACTOR, DEFAULT_TARGET_FLOOR_MS
from app.tuning.points import Layout, Point
from app.tuning.timing import (
    WARM_UP_RUNS,
    Feeds,
    Stability,
    Window,
    time_concurrent,
    until_stable,
    warm_up,
)

FeedsFor = Callable[[int], Feeds]

#: Model file bytes x sessions up to which every layout's sessions are held open at once, so
#: that layouts can be measured in turn (16 cores: 31 sessions of a 30 MB model).
INTERLEAVE_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class ProfileSettings:
    device: str
    layouts: tuple[Layout, ...]
    batch_sizes: tuple[int, ...]
    #: Stop growing a layout's batch size once a batch takes longer than this; None: the
    #: default target (app.tuning.plan) from the layout's own smallest batch.
    stop_above_ms: float | None = None
    window_s: float = 0.2
    stability: Stability = field(default_factory=Stability)
    #: Times every point is measured (in alternating orders); the best pass counts.
    passes: int = 2
    #: Seconds a pass may take: layouts taking turns stop growing their batch size before
    #: a round that would end past it; measured one after another, each has an equal share
    #: (each measures its smallest batch at least).
    budget_s: float | None = None
    #: Sessions with spinning intra-op threads (InstanceOptions.spinning).
    spinning: bool = False


@dataclass(frozen=True)
class Profile:
    points: list[Point]
    #: Execution providers the sessions really got (ORT may fall back silently).
    providers: list[str]


def cpu_cores() -> int:
    """Cores this process may use, counted as the server counts them for its default threads
    (app.cores: the affinity mask capped by the cgroup CPU quota), so that a layout here is
    one the server would run within the same cores."""
    return available_cores()


def default_layouts(device: str, cores: int) -> tuple[Layout, ...]:
    """On CPU, every count x threads that uses all the cores with count a power of two (or
    the core count): 1x2 and 2x1 on 2 cores; 1x16, 2x8, 4x4, 8x2, 16x1 on 16. Layouts that
    leave cores idle are left out: the server's event loop shares the cores anyway. On a
    GPU, one instance (its threads only run the operators the GPU does not take)."""
    if device != "cpu":
        return (Layout(1, max(1, cores)),)
    counts = sorted({c for c in (2**k for k in range(cores.bit_length())) if cores % c == 0})
    if cores not in counts:
        counts.append(cores)
    return tuple(Layout(count, cores // count) for count in counts)


def batch_sizes(limit: int, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Powers of two up to `limit`, and the `extra` sizes (the config's preferred sizes and
    max_batch_size) up to it."""
    powers = {2**k for k in range(limit.bit_length()) if 2**k <= limit}
    return tuple(sorted(powers | {s for s in extra if 1 <= s <= limit}))


def synthetic_feeds(
    specs: Sequence[TensorSpec], batch_size: int | None, sequence_length: int
) -> Feeds:
    """Inputs of the model's shapes: the first axis `batch_size` (None: as the graph fixes
    it), every other variable axis `sequence_length`. Floats are uniform in [0, 1); integers
    are 1 (a valid token id, attention mask and type id, and in range of any lookup table;
    strings are "1", which a graph that casts strings to numbers parses too),
    so that a text encoder computes every position as it would for a real sentence."""
    rng = np.random.default_rng(0)
    feeds: Feeds = {}
    for spec in specs:
        dims = [sequence_length if d < 0 else d for d in spec.shape]
        if batch_size is not None and dims:
            dims[0] = batch_size
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(dims, "1", dtype=object)
            continue
        dtype = numpy_dtype(spec.datatype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.random(dims).astype(dtype)
        else:
            feeds[spec.name] = np.ones(dims, dtype=dtype)
    return feeds


def open_instances(
    path: Path, device: str, layout: Layout, spinning: bool = False
) -> list[OnnxInstance]:
    """The layout's sessions, as the server would make them."""
    options = InstanceOptions(spinning=spinning)
    try:
        return [
            OnnxInstance(path, device, threads=layout.threads, index=i, options=options)
            for i in range(layout.count)
        ]
    except ModelLoadError as exc:
        raise TuningError(str(exc)) from None


def _stop_above(settings: ProfileSettings, first: Point) -> float:
    if settings.stop_above_ms is not None:
        return settings.stop_above_ms
    return max(DEFAULT_TARGET_FACTOR * first.latency_ms_p50, DEFAULT_TARGET_FLOOR_MS)


def measure_point(
    instances: Sequence[OnnxInstance],
    layout: Layout,
    feeds: Feeds,
    batch_size: int,
    settings: ProfileSettings,
    pool: ThreadPoolExecutor,
) -> Point:
    """One (layout, batch size): warm every instance, then windows until stable."""
    list(pool.map(lambda instance: warm_up(instance.run, feeds), instances))
    runs = [instance.run for instance in instances]

    def window() -> Window:
        return time_concurrent(runs, feeds, batch_size, settings.window_s, pool)

    windows, stable = until_stable(window, settings.stability)
    last = windows[-settings.stability.last :]
    latencies_ms = np.array(Window.merge(last).latencies_s) * 1000.0
    return Point(
        layout=layout,
        batch_size=batch_size,
        latency_ms_p50=float(np.percentile(latencies_ms, 50)),
        latency_ms_p90=float(np.percentile(latencies_ms, 90)),
        throughput_sps=float(statistics.median(w.throughput_sps for w in last)),
        windows=len(windows),
        stable=stable,
    )


def profile(
    path: Path,
    settings: ProfileSettings,
    feeds_for: FeedsFor,
    progress: Callable[[Point], None] = lambda point: None,
    pass_started: Callable[[int], None] = lambda number: None,
) -> Profile:
    """Every layout of `settings` at every batch size, smallest first; a layout stops
    growing after the first batch that takes longer than the latency that could still be
    recommended (settings.stop_above_ms), which bounds the time spent on huge batches.

    With `settings.passes` > 1 the same points are measured again, in the reverse order
    (last layout first, largest batch first), and each point keeps its pass with the highest
    throughput. On a shared machine other work only ever slows a measurement down, and a
    busy spell lasting seconds would otherwise make one batch size look worse than its
    neighbours; measured twice in opposite orders, a point is rarely disturbed both times,
    and the least disturbed pass is the one comparable across points.
    """
    pass_started(1)
    first = _measure_pass(path, settings, feeds_for, progress, None)
    points = first.points
    for index in range(1, settings.passes):
        pass_started(index + 1)
        order = [(p.layout, p.batch_size) for p in reversed(points)]
        again = _measure_pass(path, settings, feeds_for, progress, order)
        # A pass whose budget ran out measured only some points: the rest keep the first.
        redo = {(p.layout, p.batch_size): p for p in again.points}
        points = [
            max(p, redo.get((p.layout, p.batch_size), p), key=lambda q: q.throughput_sps)
            for p in points
        ]
    return Profile(points=sorted(points, key=_by_layout), providers=first.providers)


def _by_layout(point: Point) -> tuple[Layout, int]:
    return point.layout, point.batch_size


def interleaves(path: Path, layouts: Sequence[Layout]) -> bool:
    """Whether every layout's sessions may be open at once (INTERLEAVE_MAX_BYTES). The
    model's size counts every file beside it: external data must sit there."""
    sessions = sum(layout.count for layout in layouts)
    size = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())
    return len(layouts) > 1 and size * sessions <= INTERLEAVE_MAX_BYTES


def _measure_pass(
    path: Path,
    settings: ProfileSettings,
    feeds_for: FeedsFor,
    progress: Callable[[Point], None],
    order: list[tuple[Layout, int]] | None,
) -> Profile:
    """One pass: every layout's sizes ascending until past the stop latency (order None),
    or exactly the (layout, size) points of `order`, in that order."""
    if interleaves(path, settings.layouts):
        return _interleaved_pass(path, settings, feeds_for, progress, order)
    points: list[Point] = []
    providers: list[str] = []
    layouts = list(settings.layouts) if order is None else list(dict.fromkeys(x for x, _ in order))
    started = time.monotonic()
    for number, layout in enumerate(layouts, start=1):
        share_ends = None
        if settings.budget_s is not None:
            share_ends = started + settings.budget_s * number / len(layouts)
        instances = open_instances(path, settings.device, layout, settings.spinning)
        providers = list(instances[0].providers)
        if order is None:
            sizes = list(settings.batch_sizes)
        else:
            sizes = [size for x, size in order if x == layout]
        with ThreadPoolExecutor(layout.count, thread_name_prefix="profile") as pool:
            stop_above: float | None = None
            for size in sizes:
                point = measure_point(instances, layout, feeds_for(size), size, settings, pool)
                points.append(point)
                progress(point)
                if share_ends is not None and time.monotonic() > share_ends:
                    break
                if order is not None:
                    continue
                stop_above = stop_above or _stop_above(settings, point)
                if point.latency_ms_p50 > stop_above:
                    break
        del instances  # free the sessions before the next layout's
    return Profile(points=points, providers=providers)


def _interleaved_pass(
    path: Path,
    settings: ProfileSettings,
    feeds_for: FeedsFor,
    progress: Callable[[Point], None],
    order: list[tuple[Layout, int]] | None,
) -> Profile:
    """`_measure_pass` with every layout's sessions open: at each batch size, ascending, the
    layouts still growing take their turn (the turn order reversed every size), until a
    layout's batch takes longer than its stop latency or the pass's budget is spent; with
    `order`, exactly its points."""
    opened = {
        layout: open_instances(path, settings.device, layout, settings.spinning)
        for layout in settings.layouts
    }
    pools = {
        layout: ThreadPoolExecutor(layout.count, thread_name_prefix="profile")
        for layout in settings.layouts
    }
    points: list[Point] = []
    feeds: dict[int, Feeds] = {}

    def measured(layout: Layout, size: int) -> Point:
        if size not in feeds:
            feeds[size] = feeds_for(size)
        point = measure_point(opened[layout], layout, feeds[size], size, settings, pools[layout])
        points.append(point)
        progress(point)
        return point

    try:
        if order is not None:
            for layout, size in order:
                measured(layout, size)
        else:
            started = time.monotonic()
            growing = list(settings.layouts)
            stop_above: dict[Layout, float] = {}
            sizes = settings.batch_sizes
            for number, size in enumerate(sizes):
                round_started = time.monotonic()
                latencies_s = 0.0
                for layout in list(growing) if number % 2 == 0 else growing[::-1]:
                    point = measured(layout, size)
                    stop_above.setdefault(layout, _stop_above(settings, point))
                    if point.latency_ms_p50 > stop_above[layout]:
                        growing.remove(layout)
                    else:
                        latencies_s += point.latency_ms_p50 / 1000
                if not growing or number + 1 == len(sizes):
                    break
                # No round is begun that would end past the budget: a round left half done
                # compares the layouts at unequal sizes. The next takes as long as this one,
                # or its fewest runs (warm-up and windows of a batch or more each) if longer.
                now = time.monotonic()
                fewest_runs = WARM_UP_RUNS + settings.stability.last
                next_round = max(now - round_started,
                                 fewest_runs * latencies_s * sizes[number + 1] / size)  # fmt: skip
                if settings.budget_s is not None and now + next_round - started > settings.budget_s:
                    break
                feeds.clear()  # one size's inputs at a time
    finally:
        for pool in pools.values():
            pool.shutdown()
    providers = list(next(iter(opened.values()))[0].providers)
    opened.clear()  # free the sessions before the caller's next ones
    return Profile(points=points, providers=providers)
