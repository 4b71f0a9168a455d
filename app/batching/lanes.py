"""A batcher's workers as lanes: each worker's thread, the batch it computes, and the one
staged behind it.

Under load a worker's next batch is taken while it still computes the current one and queued
on its thread (staged), so the thread goes from one batch to the next without waiting for a
turn of the event loop, which on a busy server answers a finished batch's callback late: an
image model's workers sat idle a sizeable share of the time between batches, far less once
staged. A staged batch is checked again as it starts, in the worker's thread: a request whose
deadline passed meanwhile is answered 504, uncomputed, and one whose caller went away is
dropped, as they would have been in the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.batching.execution import BatchResult
from app.batching.queue import Pending, deadline_exceeded
from app.batching.runner import BatchRunner
from app.errors import InferenceFailedError

#: A worker's next batch is staged behind its current one only where batches compute this
#: long, or where two whole batches already wait: a shorter one ends before a busy loop
#: would have answered it anyway, and a partial batch staged early loses the requests that
#: would have joined it.
STAGE_AFTER_S = 0.001
#: A batch taken from the queue, and when (loop time).
Taken = tuple[list[Pending], float]


class Closed:
    """`_take_now`'s answer once the batcher is closed and its queue empty."""


CLOSED = Closed()


@dataclass(eq=False)
class Launched:
    """A batch handed to its worker's thread; `finished` resolves to its result and when
    it computed (loop times)."""

    batch: list[Pending]
    taken_at: float
    launched_at: float
    finished: asyncio.Future[tuple[BatchResult, float, float]]
    #: Queued behind the batch its worker computes: its thread checks the deadlines and
    #: clients again when it starts it, reading loop time as time.monotonic() - offset.
    staged: bool = False
    clock_offset: float = 0.0
    #: Set by the thread when it starts a staged batch (loop time).
    started_at: float = 0.0
    #: Set on the loop as its results arrive, before `finished` wakes the worker's task.
    computed: bool = False


@dataclass(eq=False)
class Lane:
    """One worker: its runner, its thread, and its batches in flight (the one computing,
    and at most one staged behind it)."""

    runner: BatchRunner
    executor: ThreadPoolExecutor
    #: Batches launched whose bookkeeping its task has not done yet, oldest first.
    unbooked: deque[Launched] = field(default_factory=deque)
    #: How long its last batch computed (s).
    last_compute_s: float = 0.0

    @property
    def computing(self) -> int:
        """Batches its thread has not finished (at most two: one computing, one staged)."""
        return sum(not launched.computed for launched in self.unbooked)


def still_wanted(launched: Launched) -> tuple[list[Pending], list[Pending]]:
    """In the thread, as a staged batch starts: (the requests to compute, those whose
    deadline passed while it waited). A request whose caller went away (its future is
    done: cancelled) is left out of both; its answer would go nowhere."""
    now = launched.started_at = time.monotonic() - launched.clock_offset
    wanted: list[Pending] = []
    expired: list[Pending] = []
    for pending in launched.batch:
        if pending.future.done():
            continue
        if pending.deadline is not None and pending.deadline <= now:
            expired.append(pending)
        else:
            wanted.append(pending)
    return wanted, expired


def answer_expired(model: str, launched: Launched, expired: Sequence[Pending]) -> None:
    """On the loop: answer 504 the requests of a staged batch whose deadline passed before
    it started (`still_wanted`)."""
    for pending in expired:
        if not pending.future.done():
            waited_s = launched.started_at - pending.enqueued
            pending.future.set_exception(deadline_exceeded(model, waited_s, "waiting for a worker"))


def answer(
    model: str,
    batch: Sequence[Pending],
    result: BatchResult,
    *,
    device: str,
    answered: Callable[[Pending, float], None] | None,
) -> None:
    """On the loop: answer each request of a computed batch with its outputs or its
    failure, telling `answered` (the latency strategy) of each one served."""
    now = asyncio.get_running_loop().time()
    for pending, outcome in zip(batch, result.outputs, strict=True):
        if pending.future.done():
            continue
        if isinstance(outcome, Exception):
            failure = (
                f"model '{model}' failed to run on {device}: {outcome or type(outcome).__name__}"
            )
            pending.future.set_exception(InferenceFailedError(failure))
            continue
        if answered is not None:
            answered(pending, now)
        pending.future.set_result(outcome)
