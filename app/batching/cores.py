"""The machine's cores, shared by the CPU workers of every model version.

Each version's layout is tuned as if it had the machine to itself. With many versions
resident, their workers would together run more compute threads than there are cores, and
every batch would slow down in the scramble. A batch on the CPU therefore runs once its
worker's threads fit among the cores not busy (Triton's rate limiter, with cores as the one
resource), first come first served; a version alone on the machine never waits.
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

    @property
    def busy(self) -> int:
        """Compute threads running batches now."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Batches waiting for cores now."""
        return len(self._waiting)

    def take(self, threads: int) -> int:
        """Wait until `threads` (at most every core) are free, in turn; what was taken."""
        wanted = max(threads, 1)
        with self._lock:
            if not self.share:
                self._count(wanted)
                return wanted
            wanted = min(wanted, self.cores)
            if not self._waiting and self._busy + wanted <= self.cores:
                self._count(wanted)
                return wanted
            granted = threading.Event()
            self._waiting.append((wanted, granted))
        granted.wait()
        return wanted

    @contextlib.contextmanager
    def held(self, threads: int) -> Iterator[None]:
        """`threads` cores taken for the block (in turn), and released after it."""
        taken = self.take(threads)
        try:
            yield
        finally:
            self.release(taken)

    def release(self, taken: int) -> None:
        with self._lock:
            self._busy -= taken
            while self._waiting and self._busy + self._waiting[0][0] <= self.cores:
                wanted, granted = self._waiting.popleft()
                self._count(wanted)
                granted.set()

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
