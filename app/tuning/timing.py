"""Timing model sessions as the server runs them, shared by `batchserve optimize evaluate`
and `batchserve profile` so that both measure the same way.

A measurement is a *window*: one session (or several at once, from threads, as a server's
instances run) calls `run(feeds)` over and over for at least `window_s`, and the window
records every run's latency and the samples computed per second of wall time. Windows are
repeated, either a fixed number of rounds (evaluate, which interleaves variants) or until the
last few agree (profile, which wants each point stable before it moves on).

Blocking throughout (ONNX Runtime sessions release the GIL while they compute, which is what
lets several instances run at once from threads): call it from a command or a thread, never
from an event loop.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Feeds = dict[str, np.ndarray]
#: One session's inference call (OnnxInstance.run); its result is not looked at.
Run = Callable[[Feeds], object]

#: Runs per session before timing: the first runs of a batch shape pay for lazy
#: initialization (allocations, kernel selection) that serving pays once, at warm-up.
WARM_UP_RUNS = 3


@dataclass(frozen=True)
class Window:
    """What one timing window measured."""

    #: Samples computed (batch size x runs, over every session).
    samples: int
    #: Wall time from the first run's start to the last run's end.
    seconds: float
    #: Every run's own duration.
    latencies_s: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput_sps(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @staticmethod
    def merge(windows: Sequence[Window]) -> Window:
        """Several windows as one: their samples over their summed time (back to back)."""
        return Window(
            samples=sum(w.samples for w in windows),
            seconds=sum(w.seconds for w in windows),
            latencies_s=tuple(t for w in windows for t in w.latencies_s),
        )


def warm_up(run: Run, feeds: Feeds, runs: int = WARM_UP_RUNS) -> None:
    for _ in range(runs):
        run(feeds)


def interleaved_latencies_ms(
    runs: Sequence[Run], feeds: Feeds, seconds: float, least: int = 3
) -> list[float]:
    """Each session's median latency (ms) on `feeds`, one call at a time in rotation (the
    order reversed every round) for `seconds`, `least` calls each at the fewest. Timed one
    session after another, a burst of other work on a shared machine falls on one of them
    and decides the comparison; in rotation it slows them alike."""
    for run in runs:
        warm_up(run, feeds)
    times: list[list[float]] = [[] for _ in runs]
    turns = list(zip(runs, times, strict=True))
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends or len(times[0]) < least:
        for run, own in turns:
            began = time.perf_counter()
            run(feeds)
            own.append(time.perf_counter() - began)
        turns.reverse()
    return [statistics.median(own) * 1000 for own in times]


def time_window(
    run: Run, feeds: Feeds, batch_size: int, window_s: float, min_runs: int = 2
) -> Window:
    """Run back to back for at least `window_s` and `min_runs` runs."""
    latencies: list[float] = []
    start = now = time.perf_counter()
    while now - start < window_s or len(latencies) < min_runs:
        before = now
        run(feeds)
        now = time.perf_counter()
        latencies.append(now - before)
    return Window(batch_size * len(latencies), now - start, tuple(latencies))


def time_concurrent(
    runs: Sequence[Run],
    feeds: Feeds,
    batch_size: int,
    window_s: float,
    pool: ThreadPoolExecutor,
    min_runs: int = 1,
) -> Window:
    """Every session runs its own window at the same time, each from a thread of `pool`
    (which needs at least len(runs) threads), as a server's instances do at saturation; the
    aggregate throughput is the sum of the sessions' own. A session whose window is done
    keeps computing, untimed, until every window is: else the last one's tail would run
    without contention, or (counted as wall time from the first start to the last end) with
    the others' cores counted idle, which read a text encoder's 2x1 layout at well under
    what it computes. One session is timed on the calling thread."""
    if len(runs) == 1:
        return time_window(runs[0], feeds, batch_size, window_s, min_runs)
    barrier = threading.Barrier(len(runs))
    lock = threading.Lock()
    timing = [len(runs)]  # windows still timing
    every_window_done = threading.Event()

    def one(run: Run) -> Window:
        barrier.wait()  # start together, so the window is one of full contention
        window = time_window(run, feeds, batch_size, window_s, min_runs)
        with lock:
            timing[0] -= 1
            if not timing[0]:
                every_window_done.set()
        while not every_window_done.is_set():
            run(feeds)
        return window

    windows = list(pool.map(one, runs))
    samples = sum(window.samples for window in windows)
    rate = sum(window.throughput_sps for window in windows)
    return Window(
        samples=samples,
        seconds=samples / rate if rate > 0 else 0.0,  # the wall time at the summed rate
        latencies_s=tuple(t for window in windows for t in window.latencies_s),
    )


def spread(values: Sequence[float]) -> float:
    """(max - min) / mean: how far apart repeated measurements are."""
    mean = statistics.fmean(values)
    return (max(values) - min(values)) / mean if mean > 0 else float("inf")


@dataclass(frozen=True)
class Stability:
    """When repeated windows count as stable: the last `last` throughputs within
    `tolerance` of their mean; stop anyway after `max_windows` or `max_seconds` (once
    `last` windows exist), and say it did not settle."""

    tolerance: float = 0.05
    last: int = 3
    max_windows: int = 15
    max_seconds: float = 8.0


def until_stable(window: Callable[[], Window], stability: Stability) -> tuple[list[Window], bool]:
    """Windows until the last ones agree; the windows and whether they settled."""
    windows: list[Window] = []
    started = time.perf_counter()
    while True:
        windows.append(window())
        if len(windows) < stability.last:
            continue
        recent = [w.throughput_sps for w in windows[-stability.last :]]
        if spread(recent) <= stability.tolerance:
            return windows, True
        elapsed = time.perf_counter() - started
        if len(windows) >= stability.max_windows or elapsed >= stability.max_seconds:
            return windows, False
