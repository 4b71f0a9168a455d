"""How a batcher decides: the strategy it consults at a few named points.

- `admit`: may a request join the queue (beyond the queue's own bounds)?
- `plan`: a worker is free and a group is queued: how many samples to take, or until when
  to wait for more?
- `refuse_late`: the batch is formed: which of its requests to refuse instead of compute?
- `observe`: a batch ran (its size and how long it occupied the worker), and each answer
  was delivered (its latency).

`QueueDelay` is the default: work-conserving, with the model's optional `max_queue_delay`.
`LatencyTarget` is latency-target batching (latency.py has its models and its reasoning).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.batching.formation import hold_until
from app.batching.latency import (
    ArrivalRate,
    LatencyModel,
    ShedThreshold,
    expected_latency,
    plan_batch,
)
from app.batching.observer import BatchObserver
from app.batching.policy import BatchingPolicy
from app.batching.queue import Pending, RequestQueue, ShapeGroup
from app.errors import OverloadedError


class QueueDelay:
    """Take what is queued now, unless the model sets a queue delay (formation.hold_until)."""

    #: Whether admit, queued and answered do anything: the batcher skips them per request
    #: when they do not (a no-op call per request costs measurable throughput).
    per_request = False

    def __init__(self, policy: BatchingPolicy) -> None:
        self._policy = policy

    def admit(self, queue: RequestQueue, incoming_samples: int) -> None:
        """Raise OverloadedError to refuse a request the queue's bounds would admit."""

    def queued(self, samples: int, now: float) -> None:
        """A request of `samples` joined the queue at `now`."""

    def plan(
        self, group: ShapeGroup, worker: str, draining: bool
    ) -> tuple[int | None, float | None]:
        """(most samples to take or None, loop time to wait until or None)."""
        return None, hold_until(self._policy, group, draining)

    def refuse_late(
        self, batch: list[Pending], worker: str, *, waited: bool, draining: bool
    ) -> list[Pending]:
        """The requests of `batch` to run (the strategy answers the others itself); `waited`
        says whether the worker waited for a fuller batch."""
        return batch

    def observe(self, worker: str, samples: int, occupied_s: float, failed: bool) -> None:
        """A batch of `samples` occupied `worker` for `occupied_s`; `failed`: some of it
        failed."""

    def answered(self, pending: Pending, now: float) -> None:
        """`pending` got its outputs at `now`."""


class LatencyTarget(QueueDelay):
    """Latency-target batching: batch sizes, waits and refusals chosen to keep each request's
    latency (from its arrival) under the model's target."""

    per_request = True

    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        *,
        workers: Sequence[str],
        observer: BatchObserver,
    ) -> None:
        super().__init__(policy)
        assert policy.latency_target_s is not None
        self._name = name
        self._target = policy.latency_target_s
        self._limit = policy.max_batch_size
        self._observer = observer
        self._models = {worker: LatencyModel() for worker in workers}
        self._arrivals = ArrivalRate()
        self._shed_at = ShedThreshold()
        #: When each worker's batch in progress should end (loop time; absent when idle).
        self._busy_until: dict[str, float] = {}

    def admit(self, queue: RequestQueue, incoming_samples: int) -> None:
        """Shed a request that the work already queued would make miss the target."""
        if not queue.depth:
            return
        expected = expected_latency(
            list(self._models.values()),
            target_s=self._target,
            limit=max(self._limit, 1),
            queued=queue.queued_samples,
            incoming=max(incoming_samples, 1),
            busy_s=self._first_free_in(),
        )
        if expected is not None and expected > self._shed_at.share * self._target:
            self._observer.decided("shed")
            raise OverloadedError(
                f"model '{self._name}' cannot answer within its latency target "
                f"({self._target * 1000:.0f} ms): about {expected * 1000:.0f} ms of work is "
                "queued; retry later",
                retry_after_s=max(1.0, expected),
            )

    def queued(self, samples: int, now: float) -> None:
        self._arrivals.add(samples, now)

    def _first_free_in(self) -> float:
        """Seconds until the first worker is free (0 when one is idle now)."""
        if len(self._busy_until) < len(self._models):
            return 0.0
        now = asyncio.get_running_loop().time()
        return max(0.0, min(self._busy_until.values()) - now)

    def plan(
        self, group: ShapeGroup, worker: str, draining: bool
    ) -> tuple[int | None, float | None]:
        if not self._limit:
            return None, None
        now = asyncio.get_running_loop().time()
        plan = plan_batch(
            self._models[worker],
            target_s=self._target,
            limit=self._limit,
            queued=group.samples,
            oldest_arrived=group.items[0].arrived,
            rate=self._arrivals.at(now),
            now=now,
            workers=len(self._models),
        )
        return plan.take, None if draining else plan.hold_until

    def refuse_late(
        self, batch: list[Pending], worker: str, *, waited: bool, draining: bool
    ) -> list[Pending]:
        """Answer 429 to the requests of `batch` that the queue has made too late to make
        the target in it; return the others, the batch to run (expected to end when the
        worker's model says).

        Computing a request that will miss anyway only spends the worker on it and makes the
        requests behind it late too, the queued ones and those arriving meanwhile (Triton's
        queue policy rejects timed-out requests the same way). "Will miss" counts the batch's
        compute pessimistically (the prediction plus about two of its typical errors): a
        request computed on a few ms of slack misses whenever its batch runs a little slow.
        Oldest first, each refusal shrinking the batch the next is judged in. Kept all the
        same: a request already late when it was queued (its body or its tokenizing took the
        time: refusing it would not be the queue's doing, and retrying would not help), and
        one whose compute alone exceeds the target. Refusals here do not lower the shed
        threshold, which steers the answers' misses: shedding more on arrival would turn away
        requests that might have made it, where this turns away only those that cannot.
        """
        kept = self._refuse(batch, worker, draining) if self._limit else batch
        if kept:
            if self._limit:
                self._observer.decided("waited" if waited else "now")
            now = asyncio.get_running_loop().time()
            samples = sum(p.samples for p in kept)
            self._busy_until[worker] = now + self._models[worker].predict(samples)
        return kept

    def _refuse(self, batch: list[Pending], worker: str, draining: bool) -> list[Pending]:
        model = self._models[worker]
        target = self._target
        if not model.fitted or draining:
            return batch
        now = asyncio.get_running_loop().time()
        samples = sum(p.samples for p in batch)
        refused: set[int] = set()
        for index, pending in sorted(enumerate(batch), key=lambda item: item[1].arrived):
            waited = now - pending.arrived
            if waited + model.pessimistic(samples) <= target:
                break  # the rest arrived later still
            if pending.enqueued - pending.arrived + model.predict(pending.samples) > target:
                continue  # late before it was queued, or too big to make it at all
            refused.add(index)
            samples -= pending.samples
            self._observer.decided("late")
            pending.future.set_exception(
                OverloadedError(
                    f"model '{self._name}' cannot answer within its latency target "
                    f"({target * 1000:.0f} ms): this request arrived {waited * 1000:.0f} ms "
                    f"ago, {(now - pending.enqueued) * 1000:.0f} ms of it in the queue, and "
                    f"would need about {model.predict(samples + pending.samples) * 1000:.0f} "
                    "ms more; retry later",
                    retry_after_s=1.0,
                )
            )
        return [p for i, p in enumerate(batch) if i not in refused] if refused else batch

    def observe(self, worker: str, samples: int, occupied_s: float, failed: bool) -> None:
        """Teach the worker's batch-time model: its whole occupation, hand-offs included,
        is what a batch of this size really costs in throughput."""
        self._busy_until.pop(worker, None)
        if failed:
            return
        model = self._models[worker]
        model.observe(samples, occupied_s)
        self._observer.latency_model(worker, model.fixed_s, model.per_sample_s)
        self._observer.shed_threshold(self._shed_at.share * self._target)

    def answered(self, pending: Pending, now: float) -> None:
        self._shed_at.observe(now - pending.arrived, self._target, now)
