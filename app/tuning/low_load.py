"""Tuning for lone requests: whether the chosen layout's sessions spin, and whether a
low-load-only instance (every core's threads, for a request that arrives alone) joins it.

The layout tuning chooses is the one that serves the most at saturation; on a 2-core CPU a
transformer's is 2x1, whose lone request runs on one core and takes nearly twice as long as
on a 1x2 session. A low-load-only worker (app.batching.wakeups) takes a request only while it
is the only one queued and no other worker computes, so it shortens the latency of a quiet
server without taking throughput from a busy one.

Blocking (ORT sessions), like app.tuning.at_load, which calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from app.tuning import measure
from app.tuning.plan import Plan
from app.tuning.points import Layout, Point
from app.tuning.timing import Feeds, interleaved_latencies_ms

#: Spinning threads are chosen when a lone request computes this share faster with them,
SPINNING_GAIN = 0.05
#: and at least this much sooner: below it, what spinning saves is less than the serving
#: loop's own work for a request, whose cores the spinning threads take (a tiny model tuned
#: to spin served far less at saturation for a lone request microseconds quicker) ...
SPINNING_MIN_GAIN_MS = 0.5
#: ... and the served batch loses at most this share of its throughput.
SPINNING_TOLERANCE = 0.03
#: A low-load-only instance joins a layout of several instances when one session with all
#: the cores computes a lone request this share faster than the layout's own sessions (a
#: text encoder's lone sentence, on one session of every core, takes well under the time
#: it takes on one core).
LOW_LOAD_GAIN = 0.15
#: ... and at least this much: below it the server's own cost of a request (a few tenths
#: of a millisecond) is most of the latency, and a tiny model's lone requests on the
#: low-load worker would only break up its batches under moderate load.
LOW_LOAD_MIN_GAIN_MS = 1.0
#: Sessions compared for a lone request are timed in rotation for this many profile
#: points' time (the points measured one after another took longer still), and
#: at most LONE_REQUEST_MAX_S: `batchserve profile` allows a point seconds to settle.
LONE_REQUEST_POINTS = 2
LONE_REQUEST_MAX_S = 1.5


@dataclass(frozen=True)
class LowLoad:
    """The low-load-only instance tuning adds: one session of `threads` threads."""

    threads: int
    spinning: bool


def _timed(
    model_path: Path,
    layout: Layout,
    size: int,
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> dict[bool, Point | None]:
    """`layout`'s instances at once at `size`, measured without spinning and with it, back to
    back (None: a pass stopped early)."""
    timed: dict[bool, Point | None] = {}
    for spinning in (False, True):
        one_point = replace(
            settings, layouts=(layout,), batch_sizes=(size,), budget_s=None, spinning=spinning
        )
        points = measure.profile(model_path, one_point, feeds_for).points
        timed[spinning] = points[0] if points else None
    return timed


def _rotated(
    model_path: Path,
    sessions: tuple[tuple[Layout, bool], ...],
    feeds: Feeds,
    settings: measure.ProfileSettings,
) -> list[float]:
    """Lone-request latencies (ms) of one session per (layout of one instance, spinning),
    timed in rotation: measured one after another, a busy spell of a shared machine fell
    on one of them and made the choice."""
    opened = [
        measure.open_instances(model_path, settings.device, layout, spinning)[0]
        for layout, spinning in sessions
    ]
    seconds = min(LONE_REQUEST_MAX_S, LONE_REQUEST_POINTS * settings.stability.max_seconds)
    return interleaved_latencies_ms([session.run for session in opened], feeds, seconds)


def spinning_helps(
    model_path: Path,
    layout: Layout,
    points: list[Point],
    batch_size: int,
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> bool:
    """Whether the chosen layout's sessions should spin: one of its sessions computes a lone
    request faster with spinning (`spins_faster`, the two timed in rotation), and the served
    batch keeps its throughput within SPINNING_TOLERANCE (all of the layout's instances at
    once, unless there is one). Spinning shortens a lone sentence of a text encoder; it
    changes nothing where one thread does all the work."""
    if layout.threads < 2:
        return False
    measured = {p.batch_size for p in points if p.layout == layout}
    if not measured:
        return False
    alone = min(measured)
    served = batch_size if batch_size in measured else alone
    single = Layout(1, layout.threads)
    both = ((single, False), (single, True))
    off_ms, on_ms = _rotated(model_path, both, feeds_for(alone), settings)
    if not spins_faster(off_ms, on_ms):
        return False
    if layout.count == 1:  # one session: its served throughput is the batch over its latency
        if served != alone:
            off_ms, on_ms = _rotated(model_path, both, feeds_for(served), settings)
        return off_ms >= (1 - SPINNING_TOLERANCE) * on_ms
    timed = _timed(model_path, layout, served, feeds_for, settings)
    off, on = timed[False], timed[True]
    if off is None or on is None:
        return False
    return on.throughput_sps >= (1 - SPINNING_TOLERANCE) * off.throughput_sps


def spins_faster(off_ms: float, on_ms: float) -> bool:
    """Whether a lone request computed SPINNING_GAIN and SPINNING_MIN_GAIN_MS sooner with
    spinning threads (`on_ms`) than without (`off_ms`)."""
    gained = off_ms - on_ms
    return gained >= SPINNING_GAIN * off_ms and gained >= SPINNING_MIN_GAIN_MS


def spins_slower(off_ms: float, on_ms: float) -> bool:
    """Whether spinning threads (`on_ms`) computed a lone request SPINNING_GAIN slower than
    sleeping ones (`off_ms`): the one case a low-load-only instance sleeps."""
    return on_ms - off_ms >= SPINNING_GAIN * off_ms


def low_load_instance(
    model_path: Path,
    layout: Layout,
    points: list[Point],
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> LowLoad | None:
    """The low-load-only instance for the chosen `layout`, or None: only beside several
    instances, and only where one session with all their cores computes a lone request
    LOW_LOAD_GAIN and LOW_LOAD_MIN_GAIN_MS faster than one of the layout's sessions alone
    (the profile's own points time the layout's sessions running at once, which on a tiny
    model is mostly their contention for the GIL). It spins, as ONNX Runtime's default
    session does, unless that made its lone request slower (`spins_slower`): it computes
    only while the others are idle, so its spinning takes little from them, and a lone
    request served from a spinning session was quicker even where the rotation timed the
    two alike. The three sessions are timed in rotation."""
    if layout.count < 2:
        return None
    own = [p.batch_size for p in points if p.layout == layout]
    if not own:
        return None
    narrow, wide = Layout(1, layout.threads), Layout(1, layout.count * layout.threads)
    reference, off, on = _rotated(
        model_path, ((narrow, False), (wide, False), (wide, True)), feeds_for(min(own)), settings
    )
    return low_load_choice(wide, reference_ms=reference, off_ms=off, on_ms=on)


def low_load_choice(
    wide: Layout, *, reference_ms: float, off_ms: float, on_ms: float
) -> LowLoad | None:
    """The rule, on timings of a lone request: one of the layout's sessions alone
    (`reference_ms`), the `wide` session of every core sleeping (`off_ms`) and spinning
    (`on_ms`). It spins unless spinning was slower; it joins only where the quicker of the
    two saves LOW_LOAD_GAIN of the reference and LOW_LOAD_MIN_GAIN_MS."""
    spinning = not spins_slower(off_ms, on_ms)
    quickest = on_ms if spinning else off_ms
    gained = reference_ms - quickest
    if quickest > (1 - LOW_LOAD_GAIN) * reference_ms or gained < LOW_LOAD_MIN_GAIN_MS:
        return None
    return LowLoad(threads=wide.threads, spinning=spinning)


def for_lone_requests(
    model_path: Path,
    chosen: Plan,
    points: list[Point],
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> Plan:
    """`chosen` with the lone-request checks for its layout, served in batches of its
    batch size: whether its sessions spin, and its low-load-only instance if any. Tuning at
    load and `batchserve profile` both make them, on a CPU."""
    layout = chosen.layout
    low_load = low_load_instance(model_path, layout, points, feeds_for, settings)
    served = chosen.batch_size or 1
    return replace(
        chosen,
        spinning=spinning_helps(model_path, layout, points, served, feeds_for, settings),
        low_load_threads=None if low_load is None else low_load.threads,
        low_load_spinning=low_load is not None and low_load.spinning,
    )
