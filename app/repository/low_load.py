"""Tuning for lone requests: whether the chosen layout's sessions spin, and whether a
low-load-only instance (every core's threads, for a request that arrives alone) joins it.

The layout tuning chooses is the one that serves the most at saturation; on a 2-core CPU a
transformer's is 2x1, whose lone request runs on one core and takes nearly twice as long as
on a 1x2 session. A low-load-only worker (app.batching.wakeups) takes a request only while it
is the only one queued and no other worker computes, so it shortens the latency of a quiet
server without taking throughput from a busy one.

Blocking (ORT sessions), like app.repository.autotune, which calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.profile import measure
from app.profile.recommend import Layout, Point, Recommendation
from app.timing import interleaved_latencies_ms

#: Spinning threads are chosen when a lone request computes this share faster with them,
SPINNING_GAIN = 0.05
#: and at least this much sooner: below it, what spinning saves is less than the serving
#: loop's own work for a request, whose cores the spinning threads take (digits tuned to a
#: spinning 1x2, a lone request a few microseconds quicker, served 0.44x at C=32) ...
SPINNING_MIN_GAIN_MS = 0.5
#: ... and the served batch loses at most this share of its throughput.
SPINNING_TOLERANCE = 0.03
#: A low-load-only instance joins a layout of several instances when one session with all
#: the cores computes a lone request this share faster than the layout's own sessions (the
#: text model at 128 tokens on 2 cores: 1x2 took about 0.6 of 2x1's time).
LOW_LOAD_GAIN = 0.15
#: ... and at least this much: below it the server's own cost of a request (a few tenths
#: of a millisecond) is most of the latency, and a tiny model's lone requests on the
#: low-load worker would only break up its batches under moderate load.
LOW_LOAD_MIN_GAIN_MS = 1.0
#: Its three sessions are timed in rotation for this many profile points' time (the four
#: points it measured one after another took up to twice that).
LONE_REQUEST_POINTS = 2


@dataclass(frozen=True)
class LowLoad:
    """The low-load-only instance tuning adds: one session of `threads` threads."""

    threads: int
    spinning: bool


def _timed(
    model_path: Path,
    layouts: tuple[Layout, ...],
    sizes: tuple[int, ...],
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> dict[bool, dict[tuple[Layout, int], Point]]:
    """`layouts` at `sizes`, measured without spinning and with it, back to back."""
    return {
        spinning: {
            (p.layout, p.batch_size): p
            for p in measure.profile(
                model_path,
                replace(settings, layouts=layouts, batch_sizes=sizes, budget_s=None,
                        spinning=spinning),
                feeds_for,
            ).points
        }
        for spinning in (False, True)
    }  # fmt: skip


def spinning_helps(
    model_path: Path,
    layout: Layout,
    points: list[Point],
    batch_size: int,
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> bool:
    """Whether the chosen layout's sessions should spin: its smallest batch (a lone
    request) and the served batch measured without spinning and with it (`spins_faster`,
    and the served batch within SPINNING_TOLERANCE). Spinning shortened a lone sentence of
    the text model by about 15%; it changes nothing where one thread does all the work."""
    if layout.threads < 2:
        return False
    measured = {p.batch_size for p in points if p.layout == layout}
    sizes = tuple(sorted({min(measured), batch_size} & measured))
    timed = _timed(model_path, (layout,), sizes, feeds_for, settings)
    off, on = timed[False], timed[True]
    alone, served = (layout, sizes[0]), (layout, sizes[-1])
    if not {alone, served} <= on.keys() & off.keys():  # a pass stopped early
        return False
    kept = on[served].throughput_sps >= (1 - SPINNING_TOLERANCE) * off[served].throughput_sps
    return spins_faster(off[alone].latency_ms_p50, on[alone].latency_ms_p50) and kept


def spins_faster(off_ms: float, on_ms: float) -> bool:
    """Whether a lone request computed SPINNING_GAIN and SPINNING_MIN_GAIN_MS sooner with
    spinning threads (`on_ms`) than without (`off_ms`)."""
    gained = off_ms - on_ms
    return gained >= SPINNING_GAIN * off_ms and gained >= SPINNING_MIN_GAIN_MS


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
    model is mostly their contention for the GIL). It spins where that makes its lone
    request faster (`spins_faster`; it computes only while the others are idle, so its
    spinning takes little from them). The three sessions are timed in rotation: measured
    one after another, a busy spell of the machine made either choice."""
    if layout.count < 2:
        return None
    own = [p.batch_size for p in points if p.layout == layout]
    if not own:
        return None
    narrow, wide = Layout(1, layout.threads), Layout(1, layout.count * layout.threads)
    sessions = [
        measure.open_instances(model_path, settings.device, shape, spinning)[0]
        for shape, spinning in ((narrow, False), (wide, False), (wide, True))
    ]
    seconds = LONE_REQUEST_POINTS * settings.stability.max_seconds
    reference, off, on = interleaved_latencies_ms(
        [session.run for session in sessions], feeds_for(min(own)), seconds
    )
    spinning = spins_faster(off, on)
    quickest = on if spinning else off
    # The layout's own session as it serves: spinning only where tuning chose it for them.
    gained = reference - quickest
    if quickest > (1 - LOW_LOAD_GAIN) * reference or gained < LOW_LOAD_MIN_GAIN_MS:
        return None
    return LowLoad(threads=wide.threads, spinning=spinning)


def lone_request_fields(
    model_path: Path,
    layout: Layout,
    points: list[Point],
    served: int,
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> dict[str, Any]:
    """The lone-request checks for `layout` served in batches of `served`, as the fields
    tuning's result and `batchserve profile`'s recommendation both carry: `spinning`,
    `low_load_threads` (None: no low-load-only instance) and `low_load_spinning`."""
    low_load = low_load_instance(model_path, layout, points, feeds_for, settings)
    return {
        "spinning": spinning_helps(model_path, layout, points, served, feeds_for, settings),
        "low_load_threads": None if low_load is None else low_load.threads,
        "low_load_spinning": low_load is not None and low_load.spinning,
    }


def for_lone_requests(
    model_path: Path,
    recommendation: Recommendation,
    points: list[Point],
    feeds_for: measure.FeedsFor,
    settings: measure.ProfileSettings,
) -> Recommendation:
    """`batchserve profile`'s recommendation with the checks tuning at load makes."""
    served = max(recommendation.preferred_batch_sizes, default=1)
    fields = lone_request_fields(
        model_path, recommendation.layout, points, served, feeds_for, settings
    )
    return replace(recommendation, **fields)
