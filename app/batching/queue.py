"""The queue of one model version: what waits, its bounds, its deadlines, its cancellations.

Requests wait in shape groups (requests whose non-batch shapes agree, per priority level),
oldest first. The queue counts what waits (requests, samples, input bytes) for admission,
answers a request whose deadline passes while it waits (one timer, set for the nearest
deadline), and forgets a request whose caller cancelled it. It never computes anything:
batch formation (formation.py) takes requests out of it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.batching.policy import BatchingPolicy
from app.errors import DeadlineExceededError, OverloadedError

Outputs = dict[str, np.ndarray]
ShapeKey = tuple[tuple[int, ...], ...]
GroupKey = tuple[int, ShapeKey]  # (priority level, non-batch shapes)


@dataclass(slots=True, eq=False)
class Pending:
    """One queued request."""

    inputs: dict[str, np.ndarray]
    samples: int
    nbytes: int
    #: When it was queued and when it reached the server (loop time): latency counts from
    #: arrival, queue wait from enqueueing.
    enqueued: float
    arrived: float
    future: asyncio.Future[Outputs]
    group: ShapeGroup
    deadline: float | None = None
    #: Length along the padded axis (variable-length batching), else 0.
    length: int = 0
    #: True while the request counts in the queue (not taken, expired or cancelled).
    queued: bool = True


@dataclass(slots=True)
class ShapeGroup:
    """Queued requests whose non-batch shapes agree, oldest first."""

    items: deque[Pending] = field(default_factory=deque)
    samples: int = 0


class RequestQueue:
    """The requests of one model version waiting for a worker."""

    def __init__(self, name: str, policy: BatchingPolicy, on_depth: Callable[[int], None]) -> None:
        self.name = name
        self.policy = policy
        self._on_depth = on_depth
        self._groups: OrderedDict[GroupKey, ShapeGroup] = OrderedDict()
        self.depth = 0
        self.queued_bytes = 0
        self.queued_samples = 0
        self._deadlines: list[tuple[float, int, Pending]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._sequence = itertools.count()

    # -- admission ------------------------------------------------------------------------

    def check_bounds(self, incoming_bytes: int, incoming_samples: int) -> None:
        """Raise OverloadedError if a request of this size would overflow the queue. The
        request that finds the queue empty is always admitted, so one large request is
        never starved."""
        policy = self.policy
        if self.depth >= policy.max_queue_size:
            raise self._full(f"{policy.max_queue_size} requests waiting")
        if not self.depth:
            return
        samples = policy.max_queue_samples
        if samples is not None and self.queued_samples + incoming_samples > samples:
            raise self._full(
                f"{self.queued_samples} samples waiting, limit {samples}; this request adds "
                f"{incoming_samples}"
            )
        limit = policy.max_queue_bytes
        if limit is not None and self.queued_bytes + incoming_bytes > limit:
            raise self._full(
                f"{self.queued_bytes} bytes of inputs waiting, limit {limit}; this request "
                f"adds {incoming_bytes}"
            )

    def _full(self, detail: str) -> OverloadedError:
        # "Exceeds maximum queue size" is Triton's wording, which its users' scripts match.
        return OverloadedError(
            f"Exceeds maximum queue size: model '{self.name}' queue is full ({detail}); "
            "retry later",
            retry_after_s=1.0,
        )

    # -- joining --------------------------------------------------------------------------

    def add(
        self,
        inputs: dict[str, np.ndarray],
        key: GroupKey,
        samples: int,
        nbytes: int,
        length: int,
        deadline: float | None,
        arrived: float | None,
    ) -> Pending:
        """Queue one request (already admitted); its future resolves to its outputs."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError(
                f"model '{self.name}': the request's deadline passed before it was queued "
                "(while it was read, decoded or pre-processed); it was not computed"
            )
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = ShapeGroup()
        pending = Pending(
            inputs, samples, nbytes, now, now if arrived is None else min(arrived, now),
            loop.create_future(), group, deadline, length,
        )  # fmt: skip
        pending.future.add_done_callback(lambda _f: self._cancelled(pending))
        group.items.append(pending)
        group.samples += samples
        self.depth += 1
        self.queued_bytes += nbytes
        self.queued_samples += samples
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._sequence), pending))
            if self._deadlines[0][2] is pending:
                self._arm_deadline_timer()
        self._on_depth(self.depth)
        return pending

    # -- leaving --------------------------------------------------------------------------

    def leave(self, pending: Pending) -> None:
        """Stop counting `pending` in the queue (it stays in its deque until pruned)."""
        pending.queued = False
        pending.group.samples -= pending.samples
        self.depth -= 1
        self.queued_bytes -= pending.nbytes
        self.queued_samples -= pending.samples

    def gone(self, pending: Pending) -> bool:
        """True (and the request forgotten) if it left already or its caller cancelled it;
        a cancelled future's done-callback may not have run yet."""
        if not pending.queued:
            return True
        if pending.future.done():
            self._cancelled(pending)
            return True
        return False

    def _cancelled(self, pending: Pending) -> None:
        if pending.queued and pending.future.cancelled():
            self.leave(pending)
            self._on_depth(self.depth)

    def changed(self) -> None:
        """Report the depth after requests were taken."""
        self._on_depth(self.depth)

    # -- deadlines ------------------------------------------------------------------------

    def _arm_deadline_timer(self) -> None:
        """Set the one timer for the nearest deadline of a request still queued."""
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._deadlines:
            loop = asyncio.get_running_loop()
            self._deadline_timer = loop.call_at(self._deadlines[0][0], self.expire)

    def expire(self) -> None:
        """Answer every queued request whose deadline has passed, uncomputed. Run by the
        timer, and again before each batch is formed: a timer that fired late (a stalled
        process) must not let an expired request into a batch."""
        self._deadline_timer = None
        now = asyncio.get_running_loop().time()
        expired = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, pending = heapq.heappop(self._deadlines)
            if not pending.queued:
                continue
            self.leave(pending)
            expired += 1
            pending.future.set_exception(
                deadline_exceeded(self.name, now - pending.enqueued, "in the queue")
            )
        if expired:
            self._on_depth(self.depth)
        self._arm_deadline_timer()

    def due(self, now: float) -> bool:
        """True when some queued request's deadline has passed (its timer has not run)."""
        return bool(self._deadlines) and self._deadlines[0][0] <= now

    def close(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()

    # -- the head -------------------------------------------------------------------------

    def oldest_group(self) -> ShapeGroup | None:
        """Of the highest priority level holding requests, the group whose head is oldest
        (after pruning requests that left)."""
        best: ShapeGroup | None = None
        best_rank: tuple[int, float] | None = None
        for key in list(self._groups):
            group = self._groups[key]
            items = group.items
            while items and not items[0].queued:
                items.popleft()
            if not items:
                del self._groups[key]
                continue
            rank = (key[0], items[0].enqueued)
            if best_rank is None or rank < best_rank:
                best, best_rank = group, rank
        return best


def deadline_exceeded(model: str, waited_s: float, where: str) -> DeadlineExceededError:
    """The answer to a request whose deadline passed after `waited_s` `where`, uncomputed."""
    return DeadlineExceededError(
        f"Request timeout expired: model '{model}': the request's deadline passed after "
        f"{waited_s * 1000:.0f} ms {where}; it was not computed"
    )
