"""Dynamic batching for one model version.

Semantics (DESIGN.md, "Batching semantics"):
- Work-conserving: a free worker takes what is queued now; it waits only when the policy sets
  a queue delay and the pending batch is below the target size, and then at most until the
  oldest queued request has waited `max_queue_delay_s` (loop time, which is monotonic).
- Batches are counted in samples and never exceed `max_batch_size`; only requests whose
  non-batch shapes agree share a batch; FIFO order is kept within each shape group, and the
  group whose head is oldest goes first.
- Every worker pulls from the same queue, so a faster worker simply takes more batches.
- One thread hand-off per batch: concatenation, execution and splitting all happen in the
  worker's thread; the event loop only resolves futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.batching.observer import BatchObserver, BatchReport
from app.batching.policy import BatchingPolicy
from app.batching.runner import BatchRunner
from app.errors import InferenceFailedError, InvalidInputError, OverloadedError, UnavailableError

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
ShapeKey = tuple[tuple[int, ...], ...]


@dataclass(slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    samples: int
    enqueued: float
    future: asyncio.Future[Outputs]


@dataclass(slots=True)
class _ShapeGroup:
    """Queued requests whose non-batch shapes agree, oldest first."""

    items: deque[_Pending] = field(default_factory=deque)
    samples: int = 0


@dataclass(slots=True)
class _BatchResult:
    outputs: list[Outputs]
    input_s: float
    compute_s: float
    output_s: float


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
        self._groups: OrderedDict[ShapeKey, _ShapeGroup] = OrderedDict()
        self._depth = 0
        self._idle: deque[asyncio.Future[None]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._closing = False

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

    async def close(self) -> None:
        """Refuse new requests, serve every queued one, then stop the workers."""
        self._closing = True
        self._wake_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=False)

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not those being computed)."""
        return self._depth

    # -- admission ------------------------------------------------------------------------

    def check_admission(self) -> None:
        """Raise at once if a request would be refused, before its body is even read."""
        if self._closing:
            raise UnavailableError(f"model '{self.name}' is shutting down")
        if self._depth >= self.policy.max_queue_size:
            raise OverloadedError(
                f"model '{self.name}' queue is full ({self.policy.max_queue_size} requests "
                "waiting); retry later",
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
        return samples, tuple(array.shape[1:] for array in inputs.values())

    async def infer(self, inputs: dict[str, np.ndarray]) -> Outputs:
        """Queue one request and wait for its own outputs (batch axis first).

        Inputs must already match the model's specs (the protocol layer checks them).
        Cancelling the caller drops the request if it has not started computing.
        """
        self.check_admission()
        samples, key = self._batch_samples(inputs)
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, samples, loop.time(), loop.create_future())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _ShapeGroup()
        group.items.append(pending)
        group.samples += samples
        self._depth += 1
        self._observer.queue_depth(self._depth)
        self._wake_one()
        return await pending.future

    # -- batch formation ------------------------------------------------------------------

    def _oldest_group(self) -> _ShapeGroup | None:
        """The group whose head request is oldest, after dropping cancelled heads."""
        oldest: _ShapeGroup | None = None
        for key in list(self._groups):
            group = self._groups[key]
            while group.items and group.items[0].future.done():
                self._drop(group, group.items.popleft())
            if not group.items:
                del self._groups[key]
            elif oldest is None or group.items[0].enqueued < oldest.items[0].enqueued:
                oldest = group
        return oldest

    def _drop(self, group: _ShapeGroup, pending: _Pending) -> None:
        group.samples -= pending.samples
        self._depth -= 1
        self._observer.request_cancelled()

    def _hold_until(self, group: _ShapeGroup) -> float | None:
        """Loop time to wait until for a fuller batch, or None to take the batch now."""
        policy = self.policy
        if self._closing or policy.max_queue_delay_s <= 0:
            return None
        if group.samples >= policy.target_batch_size:
            return None
        deadline = group.items[0].enqueued + policy.max_queue_delay_s
        return deadline if deadline > asyncio.get_running_loop().time() else None

    def _take(self, group: _ShapeGroup) -> list[_Pending]:
        limit = self.policy.take_limit(group.samples) if self.policy.batches else 1
        batch: list[_Pending] = []
        taken = 0
        while group.items:
            head = group.items[0]
            if head.future.done():
                self._drop(group, group.items.popleft())
                continue
            if batch and taken + head.samples > limit:
                break
            group.items.popleft()
            group.samples -= head.samples
            self._depth -= 1
            batch.append(head)
            taken += head.samples
        self._observer.queue_depth(self._depth)
        return batch

    async def _next_batch(self) -> list[_Pending] | None:
        while True:
            group = self._oldest_group()
            if group is None:
                if self._closing:
                    return None
                await self._sleep()
                continue
            hold_until = self._hold_until(group)
            if hold_until is not None:
                await self._sleep(until=hold_until)
                continue
            batch = self._take(group)
            if not batch:
                continue
            if self._depth:
                self._wake_one()  # more is queued: let another idle worker look at it
            return batch

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
            batch = await self._next_batch()
            if batch is None:
                return
            started = loop.time()
            waits = [started - p.enqueued for p in batch]
            samples = sum(p.samples for p in batch)
            try:
                result = await loop.run_in_executor(
                    executor, _execute, runner, [p.inputs for p in batch], self.policy.batches
                )
            except Exception as exc:
                log.warning(
                    "model %s: batch of %d failed on %s: %s", self.name, samples, runner.label, exc
                )
                elapsed = loop.time() - started
                self._observer.batch_executed(
                    BatchReport(runner.label, runner.device, samples, 0, waits, 0.0, elapsed, 0.0,
                                failed=True)
                )  # fmt: skip
                error = InferenceFailedError(
                    f"model '{self.name}' failed to run on {runner.device}: {exc}"
                )
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self._observer.batch_executed(
                BatchReport(runner.label, runner.device, samples, 0, waits, result.input_s,
                            result.compute_s, result.output_s, failed=False)
            )  # fmt: skip
            for pending, outputs in zip(batch, result.outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(outputs)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _execute(
    runner: BatchRunner, requests: list[dict[str, np.ndarray]], batches: bool
) -> _BatchResult:
    """Runs in the worker's thread: concatenate, execute, split back per request."""
    started = time.perf_counter()
    if len(requests) == 1:
        feeds = requests[0]
    else:
        feeds = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
    assembled = time.perf_counter()
    outputs = runner.run(feeds)
    computed = time.perf_counter()
    if len(requests) == 1:
        return _BatchResult([outputs], assembled - started, computed - assembled, 0.0)
    assert batches, "only batching models run several requests at once"
    counts = [next(iter(r.values())).shape[0] for r in requests]
    total = sum(counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RuntimeError(
                f"output '{name}' has shape {list(array.shape)}, expected the batch axis "
                f"({total}) first"
            )
    bounds = np.cumsum(counts)[:-1]
    split = {name: np.split(array, bounds) for name, array in outputs.items()}
    per_request = [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))]
    return _BatchResult(
        per_request, assembled - started, computed - assembled, time.perf_counter() - computed
    )
