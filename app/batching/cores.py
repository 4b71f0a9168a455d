"""The machine's cores, shared by the CPU workers of every model version.

Each version's layout is tuned as if it had the machine to itself. With many versions
resident, their workers would together run more compute threads than there are cores, and
every batch would slow down in the scramble. A batch on the CPU therefore runs once its
worker's threads fit among the cores not busy (Triton's rate limiter, with cores as the one
resource), first come first served; a version alone on the machine never waits.

A model's load takes a core too, in the background: only while no batch waits for one, so
that loading a model does not slow down the models already serving.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator

from app.batching.runner import BatchRunner


class CoreShares:
    """A counting semaphore of `cores`, taken `threads` at a time in arrival order; with
    `share` off it only counts (every batch runs at once), so the peak shows what sharing
    would have prevented."""

    def __init__(self, cores: int, *, share: bool = True) -> None:
        if cores < 1:
            raise ValueError("cores must be at least 1")
        self.cores = cores
        self.share = share
        self._busy = 0
        #: The most compute threads busy at once so far.
        self.peak = 0
        self._lock = threading.Lock()
        #: Batches waiting for cores, in arrival order: (threads, woken when granted).
        self._waiting: deque[tuple[int, threading.Event]] = deque()
        #: Background work (loads) waiting, granted only while no batch waits.
        self._background: deque[tuple[int, threading.Event]] = deque()

    @property
    def busy(self) -> int:
        """Compute threads running batches now."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Batches waiting for cores now."""
        return len(self._waiting)

    @property
    def waiting_in_background(self) -> int:
        """Background work (loads) waiting for a core now."""
        return len(self._background)

    def take(self, threads: int, *, background: bool = False) -> int:
        """Wait until `threads` (at most every core) are free, in turn; what was taken.
        In the `background`, wait as well until no batch waits (ahead or arriving)."""
        wanted = max(threads, 1)
        with self._lock:
            if not self.share:
                self._count(wanted)
                return wanted
            wanted = min(wanted, self.cores)
            queue = self._background if background else self._waiting
            ahead = self._waiting or (background and self._background)
            if not ahead and self._busy + wanted <= self.cores:
                self._count(wanted)
                return wanted
            granted = threading.Event()
            queue.append((wanted, granted))
        granted.wait()
        return wanted

    @contextlib.contextmanager
    def held(self, threads: int, *, background: bool = False) -> Iterator[None]:
        """`threads` cores taken for the block (in turn), and released after it."""
        taken = self.take(threads, background=background)
        try:
            yield
        finally:
            self.release(taken)

    def release(self, taken: int) -> None:
        with self._lock:
            self._busy -= taken
            for queue in (self._waiting, self._background):
                while queue and self._busy + queue[0][0] <= self.cores:
                    wanted, granted = queue.popleft()
                    self._count(wanted)
                    granted.set()
                if queue:  # the head waits for room: nothing behind it, nor background
                    return

    def _count(self, threads: int) -> None:
        self._busy += threads
        self.peak = max(self.peak, self._busy)


def held_by(
    cores: CoreShares | None, runner: BatchRunner
) -> contextlib.AbstractContextManager[object]:
    """The cores a batch on `runner` holds while it computes: CPU workers' threads only."""
    if cores is None or runner.device != "cpu":
        return contextlib.nullcontext()
    return cores.held(getattr(runner, "threads", 1))
