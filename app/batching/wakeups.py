"""Which worker of a batcher takes new work: the idle ones' wake-ups, each worker's speed,
and which workers may take a batch now.

At low load the idle worker that computes a sample fastest is woken (not the one idle
longest), so a slow CPU worker beside a GPU does not take every other request; a worker
back from its batch leaves queued work to a much faster idle one. Low-load-only workers
take a lone request only, while no other worker computes, and are woken first for it. A
worker passed over since a slowdown is given a batch again after a while, so that one bad
spell does not keep it idle for as long as the load stays low.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection

#: Weight of the newest batch in a worker's moving average of compute time per sample.
COST_WEIGHT = 0.2
#: A batch counts in that average as at most this many times the worker's usual cost.
STALL_CAP = 4.0
#: A worker leaves queued work to an idle one this much faster per sample (or more).
FASTER_BY = 0.7
#: A worker not measured for this long, whose average has risen INFLATED_BY over the best
#: it has shown, is judged by that best: at low load nothing else would measure it again.
REMEASURE_AFTER_S = 10.0
INFLATED_BY = 1.5


class Workers:
    """The wake-up state of one batcher's workers, named by their runners' labels."""

    def __init__(
        self,
        labels: Collection[str],
        low_load_only: Collection[str] = (),
        depth: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not set(low_load_only) <= set(labels):
            raise ValueError(
                f"low_load_only {sorted(low_load_only)} names no runner of {sorted(labels)}"
            )
        #: Idle workers' wake-ups (with their runner's label), in the order they went idle.
        self.idle_waiters: deque[tuple[asyncio.Future[None], str]] = deque()
        #: Each worker's recent compute time per sample (a moving average): the fastest
        #: idle one is woken for new work.
        self.cost: dict[str, float] = {}
        #: A worker's first batch time per sample, until its second one is in.
        self._first_cost: dict[str, float] = {}
        #: Each worker's lowest average so far, and when it last finished a batch.
        self._best_cost: dict[str, float] = {}
        self._measured_at: dict[str, float] = {}
        self._clock = clock
        #: Workers woken that have not run yet: the work they were woken for is theirs.
        self.woken: set[str] = set()
        #: Workers that take a batch only while every other worker is idle (none if all
        #: are: then the distinction means nothing).
        self.low_load_only = set(low_load_only) if set(low_load_only) != set(labels) else set()
        #: Workers computing a batch now.
        self.busy: set[str] = set()
        #: Requests queued now: low-load-only workers take only a lone one.
        self._depth = depth

    def taken(self, label: str) -> None:
        """`label` took a batch: it computes until `freed`."""
        self.busy.add(label)

    def freed(self, label: str) -> None:
        """`label`'s batch is answered: it counts as free from here."""
        self.busy.discard(label)

    async def sleep(self, label: str, until: float | None = None) -> None:
        """Wait to be woken by an arrival (or close), or until `until` in loop time."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.idle_waiters.append((waiter, label))
        timer = None if until is None else loop.call_at(until, _resolve, waiter)
        try:
            await waiter
        finally:
            self.woken.discard(label)
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()

    def wake_one(self) -> None:
        """Wake the idle worker that computes a sample fastest, so that at low load a slow
        CPU worker beside a GPU does not take every other request. Among equals (and
        workers not measured yet, which count as fastest so each gets measured), the one
        idle longest."""
        # Wake-ups already resolved (a timer's) or cancelled are dropped on the way.
        idle = [entry for entry in self.idle_waiters if not entry[0].done()]
        if not idle:
            self.idle_waiters.clear()
            return
        eligible = [i for i in range(len(idle)) if self.may_take(idle[i][1])]
        if not eligible:  # only low-load workers idle: a busy worker takes the work next
            self.idle_waiters = deque(idle)
            return
        # A low-load-only worker that may take it is there for exactly this request; the
        # others' cost per sample, learnt from batches under load, says nothing about a
        # lone request (it kept the text model's 2x1 workers on lone sentences).
        alone = [i for i in eligible if idle[i][1] in self.low_load_only]
        chosen = alone[0] if alone else min(eligible, key=lambda i: self.judged_cost(idle[i][1]))
        waiter, label = idle.pop(chosen)
        self.idle_waiters = deque(idle)
        self.woken.add(label)
        waiter.set_result(None)

    def leave_to_faster(self, label: str) -> bool:
        """Whether a worker much faster per sample than `label` is idle or already woken for
        the queued work (then it is woken if need be, and `label` goes back to sleep): a
        slow worker back from its batch would otherwise take the next request before the
        fast one it was meant for runs. A busy fast worker leaves the work to `label`."""
        if any(self._better(other, label) and self.may_take(other) for other in self.woken):
            return True
        for waiter, other in self.idle_waiters:
            if not waiter.done() and self._better(other, label) and self.may_take(other):
                self.wake_one()
                return True
        return False

    def _better(self, other: str, label: str) -> bool:
        """Whether `other` should have the work `label` found: a low-load-only worker
        (which takes only what it may) over any other, and never the other way round (an
        unmeasured worker counts as fastest: the two would pass it back and forth), else
        one much faster per sample."""
        if other in self.low_load_only or label in self.low_load_only:
            return other in self.low_load_only and label not in self.low_load_only
        if label not in self.cost:
            return False
        return self.judged_cost(other) < FASTER_BY * self.judged_cost(label)

    def judged_cost(self, label: str) -> float:
        """The cost per sample `label` is woken by: 0 before it is measured (so that it is),
        its best so far once it has been passed over for REMEASURE_AFTER_S since its
        average rose INFLATED_BY above that best (so that a slowdown that has passed shows),
        else its average."""
        cost = self.cost.get(label)
        if cost is None:
            return 0.0
        best = self._best_cost[label]
        if cost > INFLATED_BY * best and self._stale(label):
            return best
        return cost

    def _stale(self, label: str) -> bool:
        return self._clock() - self._measured_at.get(label, 0.0) >= REMEASURE_AFTER_S

    def may_take(self, label: str) -> bool:
        """Whether `label` may take a batch now: a low-load-only worker only a lone request
        while no other worker computes (one woken for the work leaves it to the faster).
        A burst (a closed-loop client's answers coming back together) goes to the others:
        taken by the all-cores session, it left their cores oversubscribed after."""
        if label not in self.low_load_only:
            return True
        return self._depth() <= 1 and not self.busy - self.low_load_only

    def idle_may_take(self) -> bool:
        """Whether an idle worker could take queued work now."""
        return any(not w.done() and self.may_take(label) for w, label in self.idle_waiters)

    def wake_all(self) -> None:
        while self.idle_waiters:
            _resolve(self.idle_waiters.popleft()[0])

    def observe_cost(self, label: str, per_sample_s: float) -> None:
        """Fold one batch's time per sample into `label`'s average. A stall (the process
        descheduled, a garbage collection, a device's first run of a shape) only ever adds
        time, so a batch counts as at most STALL_CAP times the usual: unbounded, one stall
        made a fast worker read slower than a slow one, and at low load nothing measured
        it again. A lasting slowdown still shows, a factor of 1.6 a batch."""
        previous = self.cost.get(label)
        stale = self._stale(label)
        self._measured_at[label] = self._clock()
        if previous is None:
            # The first batch has no usual to be capped by: the lower of the first two
            # starts the average (until then the worker reads as unmeasured, and is woken).
            first = self._first_cost.pop(label, None)
            if first is None:
                self._first_cost[label] = per_sample_s
            else:
                self.cost[label] = self._best_cost[label] = min(first, per_sample_s)
            return
        counted = min(per_sample_s, STALL_CAP * previous)
        # After a long gap a faster batch says the slowdown has passed: the average restarts
        # there. A slower one counts as usual (the first batch after idling often is).
        if stale and counted < previous:
            cost = counted
        else:
            cost = previous + COST_WEIGHT * (counted - previous)
        self.cost[label] = cost
        self._best_cost[label] = min(self._best_cost[label], cost)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
