"""Dynamic batching for one model version.

Semantics (DESIGN.md, "Batching semantics"):
- Work-conserving: a free worker takes what is queued now; it waits only when the policy sets
  a queue delay and the pending batch is below the target size, and then at most until the
  oldest queued request has waited `max_queue_delay_s` (loop time, which is monotonic).
- Batches are counted in samples and never exceed `max_batch_size`; only requests whose
  non-batch shapes agree share a batch; FIFO order is kept within each shape group, and the
  group whose head is oldest goes first. With priority levels, the highest level holding a
  request goes first (FIFO within a level); levels never share a batch.
- Deadlines: a request whose deadline passes while queued is answered at once with
  DeadlineExceededError and never computed (one timer, set for the nearest deadline).
  A request whose caller went away (cancelled) leaves the queue at once, uncomputed.
- Every worker pulls from the same queue, so a faster worker simply takes more batches.
- One thread hand-off per batch: concatenation, execution and splitting all happen in the
  worker's thread; the event loop only resolves futures.
- Fault isolation: when a batch fails, its requests are re-run in halves (in the same
  thread) until the failing ones are found; only those get the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.batching.latency import (
    ArrivalRate,
    LatencyModel,
    ShedThreshold,
    expected_latency,
    plan_batch,
)
from app.batching.observer import BatchObserver, BatchReport
from app.batching.padding import PaddingPlan, choose_by_length
from app.batching.policy import BatchingPolicy
from app.batching.runner import BatchRunner
from app.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
ShapeKey = tuple[tuple[int, ...], ...]
GroupKey = tuple[int, ShapeKey]  # (priority level, non-batch shapes)


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    samples: int
    nbytes: int
    enqueued: float
    future: asyncio.Future[Outputs]
    group: _ShapeGroup
    deadline: float | None = None
    #: Length along the padded axis (variable-length batching), else 0.
    length: int = 0
    #: True while the request counts in the queue (not taken, expired or cancelled).
    queued: bool = True
    #: When the request reached the server (loop time): its latency counts from there.
    arrived: float = 0.0


@dataclass(slots=True)
class _ShapeGroup:
    """Queued requests whose non-batch shapes agree, oldest first."""

    items: deque[_Pending] = field(default_factory=deque)
    samples: int = 0


@dataclass(slots=True)
class _BatchResult:
    """One entry per request: its outputs, or the exception that failed it."""

    outputs: list[Outputs | Exception]
    input_s: float = 0.0
    compute_s: float = 0.0
    output_s: float = 0.0
    positions: int = 0
    padding_positions: int = 0
    #: Samples the runner added to reach one of its fixed batch sizes (CUDA graphs).
    padding: int = 0


class Batcher:
    """Queue and workers of one model version; see the module docstring for the semantics."""

    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        runners: Sequence[BatchRunner],
        observer: BatchObserver | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self.policy = policy
        self._runners = list(runners)
        self._observer = observer or BatchObserver()
        self._groups: OrderedDict[GroupKey, _ShapeGroup] = OrderedDict()
        self._depth = 0
        self._queued_bytes = 0
        self._queued_samples = 0
        self._idle: deque[asyncio.Future[None]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        #: Draining: serve what is queued without waiting for fuller batches (SIGTERM).
        #: Closing: also refuse new requests, and stop the workers once the queue is empty.
        self._draining = False
        self._closing = False
        self._deadlines: list[tuple[float, int, _Pending]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._sequence = itertools.count()
        #: Latency-target batching: each worker's batch-time model, and the arrival rate.
        self._latency = {runner.label: LatencyModel() for runner in self._runners}
        self._arrivals = ArrivalRate()
        self._shed_at = ShedThreshold()
        #: When each worker's batch in progress should end (loop time; absent when idle).
        self._busy_until: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker task (with its own thread) per runner on the running loop."""
        self._observer.workers_started([(r.label, r.device) for r in self._runners])
        for runner in self._runners:
            executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"{self.name}-{runner.label}"
            )
            self._executors.append(executor)
            task = asyncio.get_running_loop().create_task(
                self._work(runner, executor), name=f"batcher {self.name} {runner.label}"
            )
            self._tasks.append(task)

    def begin_drain(self) -> None:
        """Serve the queued requests now, without waiting for fuller batches. Requests still
        arriving (their bodies were on the way when the server began to drain; the API
        refuses new ones) are still taken, until close()."""
        self._draining = True
        self._wake_all()

    async def close(self) -> None:
        """Refuse new requests, serve every queued one, then stop the workers."""
        self._draining = self._closing = True
        self._wake_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        for executor in self._executors:
            executor.shutdown(wait=False)

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not those being computed)."""
        return self._depth

    @property
    def queued_bytes(self) -> int:
        """Bytes of input tensors waiting in the queue."""
        return self._queued_bytes

    # -- admission ------------------------------------------------------------------------

    def check_admission(self, incoming_bytes: int = 0, incoming_samples: int = 0) -> None:
        """Raise at once if a request of `incoming_bytes` would be refused: called before
        its body is read (with its Content-Length) and again with its tensors' size."""
        if self._closing:
            raise UnavailableError(f"model '{self.name}' is shutting down")
        policy = self.policy
        if self._depth >= policy.max_queue_size:
            raise OverloadedError(
                f"model '{self.name}' queue is full ({policy.max_queue_size} requests "
                "waiting); retry later",
                retry_after_s=1.0,
            )
        samples = policy.max_queue_samples
        if (
            samples is not None
            and self._depth
            and self._queued_samples + incoming_samples > samples
        ):
            raise OverloadedError(
                f"model '{self.name}' queue is full ({self._queued_samples} samples waiting, "
                f"limit {samples}; this request adds {incoming_samples}); retry later",
                retry_after_s=1.0,
            )
        target = policy.latency_target_s
        if target is not None and self._depth:
            expected = expected_latency(
                list(self._latency.values()), target, max(policy.max_batch_size, 1),
                self._queued_samples, max(incoming_samples, 1), self._first_free_in(),
            )  # fmt: skip
            if expected is not None and expected > self._shed_at.share * target:
                self._observer.decided("shed")
                raise OverloadedError(
                    f"model '{self.name}' cannot answer within its latency target "
                    f"({target * 1000:.0f} ms): about {expected * 1000:.0f} ms of work is "
                    "queued; retry later",
                    retry_after_s=max(1.0, expected),
                )
        limit = policy.max_queue_bytes
        if limit is not None and self._depth and self._queued_bytes + incoming_bytes > limit:
            raise OverloadedError(
                f"model '{self.name}' queue is full ({self._queued_bytes} bytes of inputs "
                f"waiting, limit {limit}; this request adds {incoming_bytes}); retry later",
                retry_after_s=1.0,
            )

    def _batch_samples(self, inputs: dict[str, np.ndarray]) -> tuple[int, ShapeKey]:
        if not self.policy.batches:
            return 1, ()
        sizes = {name: array.shape[0] for name, array in inputs.items()}
        samples = next(iter(sizes.values()))
        if any(size != samples for size in sizes.values()):
            raise InvalidInputError(
                f"inputs disagree on the batch size (first axis): {sizes}; every input of "
                "one request must have the same number of samples"
            )
        if samples < 1:
            raise InvalidInputError("a request needs at least one sample (first axis >= 1)")
        if samples > self.policy.max_batch_size:
            raise InvalidInputError(
                f"request has {samples} samples but model '{self.name}' accepts at most "
                f"{self.policy.max_batch_size} per request (max_batch_size); split it"
            )
        padding = self.policy.padding
        if padding is not None:
            return samples, padding.group_shapes(inputs)
        return samples, tuple(array.shape[1:] for array in inputs.values())

    def _level(self, priority: int | None) -> int:
        levels = self.policy.priority_levels
        if priority is None or priority == 0:
            return self.policy.default_priority
        if not 1 <= priority <= levels:
            raise InvalidInputError(
                f"priority {priority} is out of range: model '{self.name}' has priority levels "
                f"1 (highest) to {levels}; 0 or none means its default, "
                f"{self.policy.default_priority}"
            )
        return priority

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None = None,
        priority: int | None = None,
    ) -> Outputs:
        """Queue one request and wait for its own outputs (batch axis first).

        Inputs must already match the model's specs (the protocol layer checks them). With
        `timeout_s`, a request still queued after that long fails with DeadlineExceededError
        and is never computed. Cancelling the caller drops the request if it is still queued.
        """
        return await self.submit(inputs, timeout_s, priority)

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None = None,
        priority: int | None = None,
        arrived: float | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queue one request; its future resolves to its outputs. Cancelling the future
        drops the request if it is still queued (see `infer`). `arrived` (loop time, default
        now) is when the request reached the server, for latency-target batching: reading
        and decoding it, or tokenizing its text, spent part of its budget."""
        samples, shapes = self._batch_samples(inputs)
        padding = self.policy.padding
        length = padding.length(inputs) if padding is not None else 0
        nbytes = sum(array.nbytes for array in inputs.values())
        self.check_admission(nbytes, samples)
        key = (self._level(priority), shapes)
        loop = asyncio.get_running_loop()
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _ShapeGroup()
        now = loop.time()
        pending = _Pending(
            inputs, samples, nbytes, now, loop.create_future(), group, None, length,
            arrived=now if arrived is None else min(arrived, now),
        )  # fmt: skip
        pending.future.add_done_callback(lambda _f: self._cancelled(pending))
        group.items.append(pending)
        group.samples += samples
        self._depth += 1
        self._queued_bytes += nbytes
        self._queued_samples += samples
        if self.policy.latency_target_s is not None:
            self._arrivals.add(samples, now)
        if timeout_s is not None:
            self._add_deadline(pending, now + timeout_s)
        self._observer.queue_depth(self._depth)
        self._wake_one()
        return pending.future

    # -- leaving the queue ----------------------------------------------------------------

    def _leave(self, pending: _Pending) -> None:
        """Stop counting `pending` in the queue (it stays in its deque until pruned)."""
        pending.queued = False
        pending.group.samples -= pending.samples
        self._depth -= 1
        self._queued_bytes -= pending.nbytes
        self._queued_samples -= pending.samples

    def _cancelled(self, pending: _Pending) -> None:
        if pending.queued and pending.future.cancelled():
            self._leave(pending)
            self._observer.queue_depth(self._depth)

    def _add_deadline(self, pending: _Pending, deadline: float) -> None:
        pending.deadline = deadline
        heapq.heappush(self._deadlines, (deadline, next(self._sequence), pending))
        if self._deadlines[0][2] is pending:
            self._arm_deadline_timer()

    def _arm_deadline_timer(self) -> None:
        """Set the one timer for the nearest deadline of a request still queued."""
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._deadlines:
            loop = asyncio.get_running_loop()
            self._deadline_timer = loop.call_at(self._deadlines[0][0], self._expire)

    def _expire(self) -> None:
        self._deadline_timer = None
        now = asyncio.get_running_loop().time()
        expired = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, pending = heapq.heappop(self._deadlines)
            if not pending.queued:
                continue
            self._leave(pending)
            expired += 1
            waited_ms = (now - pending.enqueued) * 1000
            pending.future.set_exception(
                DeadlineExceededError(
                    f"model '{self.name}': the request's deadline passed after {waited_ms:.0f} "
                    "ms in the queue; it was not computed"
                )
            )
        if expired:
            self._observer.queue_depth(self._depth)
        self._arm_deadline_timer()

    # -- batch formation ------------------------------------------------------------------

    def _oldest_group(self) -> _ShapeGroup | None:
        """Of the highest priority level holding requests, the group whose head is oldest
        (after pruning requests that left)."""
        best: _ShapeGroup | None = None
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

    def _hold_until(self, group: _ShapeGroup) -> float | None:
        """Loop time to wait until for a fuller batch, or None to take the batch now."""
        policy = self.policy
        if self._draining or policy.max_queue_delay_s <= 0:
            return None
        if group.samples >= policy.target_batch_size:
            return None
        deadline = group.items[0].enqueued + policy.max_queue_delay_s
        return deadline if deadline > asyncio.get_running_loop().time() else None

    def _first_free_in(self) -> float:
        """Seconds until the first worker is free (0 when one is idle now)."""
        if len(self._busy_until) < len(self._runners):
            return 0.0
        now = asyncio.get_running_loop().time()
        return max(0.0, min(self._busy_until.values()) - now)

    def _plan(self, group: _ShapeGroup, runner: BatchRunner) -> tuple[int, float | None]:
        """Latency-target mode: how many samples to take, and until when to wait."""
        assert self.policy.latency_target_s is not None
        now = asyncio.get_running_loop().time()
        plan = plan_batch(
            self._latency[runner.label], self.policy.latency_target_s,
            self.policy.max_batch_size, group.samples, group.items[0].arrived,
            self._arrivals.at(now), now, len(self._runners),
        )  # fmt: skip
        return plan.take, None if self._draining else plan.hold_until

    def _take(self, group: _ShapeGroup, cap: int | None = None) -> list[_Pending]:
        limit = self.policy.take_limit(group.samples) if self.policy.batches else 1
        if cap is not None:
            limit = min(limit, cap)
        if self.policy.padding is not None:
            return self._take_bounded_padding(group, limit, self.policy.padding.max_ratio)
        batch: list[_Pending] = []
        taken = 0
        items = group.items
        while items:
            head = items[0]
            if not head.queued:
                items.popleft()
                continue
            if head.future.done():  # cancelled; its done-callback has not run yet
                items.popleft()
                self._cancelled(head)
                continue
            if batch and taken + head.samples > limit:
                break
            items.popleft()
            self._leave(head)
            batch.append(head)
            taken += head.samples
        self._observer.queue_depth(self._depth)
        return batch

    def _take_bounded_padding(
        self, group: _ShapeGroup, limit: int, max_ratio: float
    ) -> list[_Pending]:
        """The oldest request and, of those queued behind it (a few batches' worth), the
        ones closest to it in length, as many as keep padding within `max_ratio`."""
        items = group.items
        window: list[_Pending] = []
        while items and len(window) < 4 * max(limit, 1):
            candidate = items.popleft()
            if not candidate.queued:
                continue
            if candidate.future.done():  # cancelled; its done-callback has not run yet
                self._cancelled(candidate)
                continue
            window.append(candidate)
        chosen = choose_by_length([(p.length, p.samples) for p in window], limit, max_ratio)
        picked = set(chosen)
        batch = [window[i] for i in chosen]
        for pending in batch:
            self._leave(pending)
        items.extendleft(reversed([p for i, p in enumerate(window) if i not in picked]))
        self._observer.queue_depth(self._depth)
        return batch

    async def _next_batch(self, runner: BatchRunner) -> list[_Pending] | None:
        waited = False
        while True:
            group = self._oldest_group()
            if group is None:
                if self._closing:
                    return None
                await self._sleep()
                continue
            cap: int | None = None
            if self.policy.latency_target_s is not None and self.policy.batches:
                cap, hold_until = self._plan(group, runner)
            else:
                hold_until = self._hold_until(group)
            if hold_until is not None:
                waited = True
                await self._sleep(until=hold_until)
                continue
            batch = self._take(group, cap)
            if cap is not None:
                batch = self._refuse_late(batch, runner)
            if not batch:
                continue
            if cap is not None:
                self._observer.decided("waited" if waited else "now")
            if self._depth:
                self._wake_one()  # more is queued: let another idle worker look at it
            return batch

    def _refuse_late(self, batch: list[_Pending], runner: BatchRunner) -> list[_Pending]:
        """Latency-target mode: answer 429 to the requests of `batch` that the queue has made
        too late to make the target in it; return the others, the batch to run.

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
        model = self._latency[runner.label]
        target = self.policy.latency_target_s
        if target is None or not model.fitted or self._draining:
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
                    f"model '{self.name}' cannot answer within its latency target "
                    f"({target * 1000:.0f} ms): this request arrived {waited * 1000:.0f} ms "
                    f"ago, {(now - pending.enqueued) * 1000:.0f} ms of it in the queue, and "
                    f"would need about {model.predict(samples + pending.samples) * 1000:.0f} "
                    "ms more; retry later",
                    retry_after_s=1.0,
                )
            )
        return [p for i, p in enumerate(batch) if i not in refused] if refused else batch

    async def _sleep(self, until: float | None = None) -> None:
        """Wait to be woken by an arrival (or close), or until `until` in loop time."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._idle.append(waiter)
        timer = None if until is None else loop.call_at(until, _resolve, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()

    def _wake_one(self) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._idle:
            _resolve(self._idle.popleft())

    # -- execution ------------------------------------------------------------------------

    async def _work(self, runner: BatchRunner, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(runner)
            if batch is None:
                return
            started = loop.time()
            waits = [started - p.enqueued for p in batch]
            samples = sum(p.samples for p in batch)
            if self.policy.latency_target_s is not None:
                self._busy_until[runner.label] = started + self._latency[runner.label].predict(
                    samples
                )
            # One hand-off each way per batch: the thread answers the requests itself
            # (_finish, one loop callback) and only then wakes this task for the bookkeeping.
            finished: asyncio.Future[_BatchResult] = loop.create_future()
            try:
                executor.submit(self._run_batch, loop, finished, runner, batch)
                result = await finished
                occupied = loop.time() - started
            except RuntimeError as exc:  # the executor was shut down
                occupied = 0.0
                result = _BatchResult([exc] * len(batch))
                self._deliver(batch, result, runner)
            failed_samples = sum(
                p.samples for p, o in zip(batch, result.outputs, strict=True)
                if isinstance(o, Exception)
            )  # fmt: skip
            if failed_samples:
                log.warning(
                    "model %s: %d of %d samples failed on %s", self.name, failed_samples,
                    samples, runner.label,
                )  # fmt: skip
            self._observer.batch_executed(
                BatchReport(runner.label, runner.device, samples, result.padding, waits,
                            result.input_s, result.compute_s, result.output_s, failed_samples,
                            result.positions, result.padding_positions)
            )  # fmt: skip
            self._busy_until.pop(runner.label, None)
            if self.policy.latency_target_s is not None and not failed_samples:
                model = self._latency[runner.label]
                # The worker's whole occupation, hand-offs included: what a batch of this
                # size really costs in throughput, not only its time in ONNX Runtime.
                model.observe(samples, occupied)
                self._observer.latency_model(runner.label, model.fixed_s, model.per_sample_s)
                self._observer.shed_threshold(self._shed_at.share * self.policy.latency_target_s)

    def _run_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        finished: asyncio.Future[_BatchResult],
        runner: BatchRunner,
        batch: list[_Pending],
    ) -> None:
        """In the worker's thread: execute, then hand the results to the loop in one call
        that answers the requests before anything else (metrics, the next batch) runs."""
        try:
            result = _execute(
                runner, [p.inputs for p in batch], self.policy.batches, self.policy.padding,
                [p.length for p in batch],
            )  # fmt: skip
        except Exception as exc:  # _execute reports failures per request; this is a bug
            result = _BatchResult([exc] * len(batch))
        # Closed loop: the server is gone, and nobody waits for these results.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._finish, batch, result, runner, finished)

    def _finish(
        self,
        batch: list[_Pending],
        result: _BatchResult,
        runner: BatchRunner,
        finished: asyncio.Future[_BatchResult],
    ) -> None:
        """On the loop: answer the batch's requests, then wake its worker task."""
        self._deliver(batch, result, runner)
        if not finished.done():
            finished.set_result(result)

    def _deliver(self, batch: list[_Pending], result: _BatchResult, runner: BatchRunner) -> None:
        """Answer each request of the batch; answers teach the shed threshold (with a target)."""
        target = self.policy.latency_target_s
        now = asyncio.get_running_loop().time()
        for pending, outcome in zip(batch, result.outputs, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(
                    InferenceFailedError(
                        f"model '{self.name}' failed to run on {runner.device}: {sanitise(outcome)}"
                    )
                )
                continue
            if target is not None:
                self._shed_at.observe(now - pending.arrived, target, now)
            pending.future.set_result(outcome)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_ORT_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : |/?\S*onnxruntime_src/\S+:\d+ ")


def sanitise(exc: Exception) -> str:
    """The runtime's message without ONNX Runtime's source paths and status prefixes."""
    return _ORT_NOISE.sub("", str(exc)).strip() or type(exc).__name__


def _execute(
    runner: BatchRunner,
    requests: list[dict[str, np.ndarray]],
    batches: bool,
    padding: PaddingPlan | None = None,
    lengths: list[int] | None = None,
) -> _BatchResult:
    """Runs in the worker's thread: assemble (concatenate, or pad), execute, split back
    per request. `lengths` are the requests' lengths along the padded axis (measured when
    they were queued). When the batch fails, bisect it so only the requests that fail alone
    get the error."""
    lengths = lengths or [0] * len(requests)
    try:
        return _execute_once(runner, requests, batches, padding, lengths)
    except Exception as exc:
        if len(requests) == 1:
            return _BatchResult([exc])
    middle = len(requests) // 2
    left = _execute(runner, requests[:middle], batches, padding, lengths[:middle])
    right = _execute(runner, requests[middle:], batches, padding, lengths[middle:])
    return _BatchResult(
        left.outputs + right.outputs,
        left.input_s + right.input_s,
        left.compute_s + right.compute_s,
        left.output_s + right.output_s,
        left.positions + right.positions,
        left.padding_positions + right.padding_positions,
        left.padding + right.padding,
    )


def _execute_once(
    runner: BatchRunner,
    requests: list[dict[str, np.ndarray]],
    batches: bool,
    padding: PaddingPlan | None,
    lengths: list[int],
) -> _BatchResult:
    started = time.perf_counter()
    counts = [next(iter(r.values())).shape[0] for r in requests]
    positions = sum(n * length for n, length in zip(counts, lengths, strict=True))
    if len(requests) == 1:
        feeds = requests[0]
    elif padding is not None:
        feeds = padding.assemble(requests, lengths)
    else:
        feeds = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
    total = sum(counts)
    batch_positions = total * max(lengths, default=0)
    assembled = time.perf_counter()
    outputs = runner.run(feeds)
    computed = time.perf_counter()
    # A runner with fixed batch sizes (BatchRunner.padded_size) pads the batch up to one.
    padded_size = getattr(runner, "padded_size", None)
    added = padded_size(total) - total if padded_size is not None and batches else 0
    if len(requests) == 1:
        return _BatchResult(
            [outputs], assembled - started, computed - assembled, 0.0, positions, 0, added
        )
    assert batches, "only batching models run several requests at once"
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RuntimeError(
                f"output '{name}' has shape {list(array.shape)}, expected the batch axis "
                f"({total}) first"
            )
    bounds = np.cumsum(counts)[:-1]
    split = {name: np.split(array, bounds) for name, array in outputs.items()}
    per_request = [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))]
    if padding is not None:
        per_request = [
            padding.cut_back(outputs, length)
            for outputs, length in zip(per_request, lengths, strict=True)
        ]
    results: list[Outputs | Exception] = list(per_request)
    return _BatchResult(
        results,
        assembled - started,
        computed - assembled,
        time.perf_counter() - computed,
        batch_positions,
        batch_positions - positions,
        added,
    )
