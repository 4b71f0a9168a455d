"""Dynamic batching for one model version: the queue, its workers, and their hand-offs.

Semantics (DESIGN.md, "Batching semantics"):
- Work-conserving: a free worker takes what is queued now; it waits only when the strategy
  says so (a queue delay below the target size, or latency-target batching).
- Batches are counted in samples and never exceed `max_batch_size`; only requests whose
  non-batch shapes agree share a batch; FIFO order is kept within each shape group, and the
  group whose head is oldest goes first. With priority levels, the highest level holding a
  request goes first (FIFO within a level); levels never share a batch.
- Deadlines are absolute (loop time): a request whose deadline passes while queued is
  answered at once with DeadlineExceededError and never computed (queue.py). A request whose
  caller went away (cancelled) leaves the queue at once, uncomputed.
- Every worker pulls from the same queue, so a faster worker simply takes more batches.
  Workers marked low-load-only take a batch only while no other worker computes: at low
  load they answer every request, under load they stand aside.
- One thread hand-off per batch: concatenation, execution and splitting all happen in the
  worker's thread (execution.py); the event loop only resolves futures.
- Under load (requests queued, no other worker idle) a worker's next batch is taken while it
  computes and staged on its thread, so the thread never waits for a turn of the loop
  between batches (lanes.py). A staged request whose deadline passes before it starts is
  still answered with DeadlineExceededError, uncomputed; one whose caller went away is
  dropped.
- Fault isolation: a failing batch is bisected so only the failing requests get the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.batching import lanes
from app.batching.cores import CoreShares, held_by
from app.batching.execution import BatchResult, execute
from app.batching.formation import take_batch, take_limit
from app.batching.lanes import CLOSED, STAGE_AFTER_S, Closed, Lane, Launched, Taken
from app.batching.observer import BatchObserver, BatchReport
from app.batching.policy import BatchingPolicy
from app.batching.queue import Outputs, Pending, RequestQueue
from app.batching.runner import BatchRunner
from app.batching.strategy import LatencyTarget, QueueDelay
from app.batching.wakeups import Workers
from app.errors import UnavailableError

log = logging.getLogger(__name__)


class Batcher:
    """Queue and workers of one model version; see the module docstring for the semantics."""

    #: Workers stage a partial next batch only where batches compute this long (lanes.py).
    stage_after_s = STAGE_AFTER_S

    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        runners: Sequence[BatchRunner],
        *,
        observer: BatchObserver | None = None,
        low_load_only: Collection[str] = (),
        cores: CoreShares | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        labels = {r.label for r in runners}
        if not set(low_load_only) <= labels:
            raise ValueError(
                f"low_load_only {sorted(low_load_only)} names no runner of {sorted(labels)}"
            )
        self.name = name
        self.policy = policy
        #: The machine's cores, shared with every other version's CPU workers.
        self._cores = cores
        self._whole_batch = max(policy.target_batch_size, 1)  # a batch waiting cannot grow
        self._runners = list(runners)
        self._observer = observer or BatchObserver()
        self._queue = RequestQueue(name, policy, self._observer.queue_depth)
        self._strategy = (
            QueueDelay(policy)
            if policy.latency_target_s is None
            else LatencyTarget(
                name, policy, workers=[r.label for r in self._runners], observer=self._observer
            )
        )
        #: Which idle worker is woken for new work, and which may take it. A closure over
        #: the queue, not self: a cycle would keep an unloaded version alive until gc runs.
        queue = self._queue
        self._workers = Workers(labels, low_load_only, depth=lambda: queue.depth)
        self._tasks: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        #: Draining: serve what is queued without waiting for fuller batches (SIGTERM).
        #: Closing: also refuse new requests, and stop the workers once the queue is empty.
        self._draining = False
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
                self._work(Lane(runner, executor)), name=f"batcher {self.name} {runner.label}"
            )
            self._tasks.append(task)

    def begin_drain(self) -> None:
        """Serve the queued requests now, without waiting for fuller batches. Requests still
        arriving (their bodies were on the way when the server began to drain; the API
        refuses new ones) are still taken, until close()."""
        self._draining = True
        self._workers.wake_all()

    async def close(self) -> None:
        """Refuse new requests, serve every queued one, then stop the workers and their
        threads: once this returns, no thread of this batcher runs or holds its runners."""
        self._draining = self._closing = True
        self._workers.wake_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue.close()
        for executor in self._executors:  # idle by now: its thread only has to see it may exit
            await asyncio.to_thread(executor.shutdown, wait=True)

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not those being computed)."""
        return self._queue.depth

    @property
    def queued_bytes(self) -> int:
        """Bytes of input tensors waiting in the queue."""
        return self._queue.queued_bytes

    # -- joining --------------------------------------------------------------------------

    def check_admission(self, incoming_bytes: int = 0, incoming_samples: int = 0) -> None:
        """Raise at once if a request of `incoming_bytes` would be refused: called before
        its body is read (with its announced size) and again with its tensors' size."""
        if self._closing:
            raise UnavailableError(f"model '{self.name}' is shutting down")
        self._queue.check_bounds(incoming_bytes, incoming_samples)
        if self._strategy.per_request:
            self._strategy.admit(self._queue, incoming_samples)

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        *,
        deadline: float | None = None,
        priority: int | None = None,
        arrived: float | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queue one request; its future resolves to its outputs (batch axis first).

        Inputs must already match the model's specs (the codecs check them). `deadline` is
        absolute, in loop time: a request still queued then fails with DeadlineExceededError
        and is never computed. Cancelling the future drops the request if it is still
        queued. `arrived` (loop time, default now) is when the request reached the server:
        latency-target batching counts its latency from there.
        """
        policy = self.policy
        samples, shapes, length = policy.request_shape(self.name, inputs)
        level = policy.level(self.name, priority) if priority else policy.default_priority
        nbytes = sum(array.nbytes for array in inputs.values())
        self.check_admission(nbytes, samples)
        # Positional: this runs once per request, and keyword calls cost measurably more.
        pending = self._queue.add(
            inputs, (level, shapes), samples, nbytes, length, deadline, arrived
        )
        if self._strategy.per_request:
            self._strategy.queued(samples, pending.enqueued)
        self._workers.wake_one()
        return pending.future

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None = None,
        priority: int | None = None,
    ) -> Outputs:
        """Queue one request and wait for its outputs; a convenience over `submit` with a
        deadline `timeout_s` from now."""
        deadline = None
        if timeout_s is not None:
            deadline = asyncio.get_running_loop().time() + timeout_s
        return await self.submit(inputs, deadline=deadline, priority=priority)

    # -- taking batches -------------------------------------------------------------------

    async def _next_batch(self, runner: BatchRunner) -> Taken | None:
        """The next batch for `runner` (None once the batcher is closed and its queue
        empty), waiting as long as `_take_now` says to."""
        waited = False
        while True:
            outcome = self._take_now(runner, waited=waited)
            if isinstance(outcome, Closed):
                return None
            if isinstance(outcome, tuple):
                return outcome
            if outcome is not None:  # held for a fuller batch
                waited = True
            await self._workers.sleep(runner.label, until=outcome)

    def _take_now(self, runner: BatchRunner, *, waited: bool) -> Taken | float | Closed | None:
        """`runner`'s next batch if it may take one now, and when it was taken: the queue
        wait is measured to that moment, the one its deadlines were checked at, so a stall
        of the process between taking a batch and running it inflates no request's queue
        wait. Otherwise what to wait for: None to be woken, a loop time to hold until (the
        strategy waits for a fuller batch), or CLOSED."""
        queue = self._queue
        while True:
            now = asyncio.get_running_loop().time()
            if queue.due(now):
                queue.expire()  # its timer is late: the loop was stalled
            group = queue.oldest_group()
            if group is None:
                return CLOSED if self._closing else None
            if not self._workers.may_take(runner.label):
                self._workers.wake_one()  # pass the work on to a worker that may take it
                return None
            if self._workers.leave_to_faster(runner.label):
                return None
            cap, hold_until = self._strategy.plan(group, runner.label, self._draining)
            if hold_until is not None:
                return hold_until
            batch = take_batch(
                queue, group, take_limit(self.policy, group, cap), self.policy.padding
            )
            batch = self._strategy.refuse_late(
                batch, runner.label, waited=waited, draining=self._draining
            )
            if not batch:
                continue
            self._workers.taken(runner.label)  # before another worker is woken to look
            if queue.depth:
                self._workers.wake_one()  # more is queued: let another idle worker look at it
            return batch, now

    # -- running them ---------------------------------------------------------------------

    async def _work(self, lane: Lane) -> None:
        runner = lane.runner
        while True:
            if not lane.unbooked:
                taken = await self._next_batch(runner)
                if taken is None:  # closed and empty: a worker that stood aside must see it
                    self._workers.wake_all()
                    return
                self._launch(lane, taken)
                self._stage(lane)
            launched = lane.unbooked[0]
            result, began, ended = await launched.finished
            lane.unbooked.popleft()
            batch, occupied = launched.batch, ended - began
            if not batch:  # staged, and every request of it expired or went away
                continue
            # Queue waits end when the batch was taken, so that a stall of the process
            # between taking and running it inflates none; a staged batch's when it started.
            until = launched.started_at or launched.taken_at
            waits = [until - p.enqueued for p in batch]
            samples = sum(p.samples for p in batch)
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
                BatchReport(
                    runner=runner.label,
                    device=runner.device,
                    samples=samples,
                    padding=result.padding,
                    queue_waits_s=waits,
                    input_s=result.input_s,
                    compute_s=result.compute_s,
                    output_s=result.output_s,
                    failed_samples=failed_samples,
                    positions=result.positions,
                    padding_positions=result.padding_positions,
                )
            )
            self._strategy.observe(runner.label, samples, occupied, failed=bool(failed_samples))
            # Its own thread's time: how long the loop took to see the batch end says
            # nothing of which worker is faster.
            busy_s = result.input_s + result.compute_s + result.output_s
            if not failed_samples and busy_s > 0:
                self._workers.observe_cost(runner.label, busy_s / samples)

    def _stage(self, lane: Lane) -> None:
        """Queue the worker's next batch behind the one it computes, if requests wait and no
        other worker is idle to take them: its thread goes on without a turn of the busy
        loop; for a model computing in microseconds, only where two whole batches wait."""
        batch = self._whole_batch  # batches of one keep to the shared queue
        two_batches = batch > 1 and self._queue.queued_samples >= 2 * batch
        if (
            lane.computing != 1
            or (lane.last_compute_s < self.stage_after_s and not two_batches)
            or self._strategy.per_request  # latency targets plan for a batch starting now
            or not self._queue.depth
            or lane.runner.label in self._workers.low_load_only
            or self._workers.idle_may_take()
        ):
            return
        taken = self._take_now(lane.runner, waited=False)
        if isinstance(taken, tuple):
            self._launch(lane, taken, staged=True)

    def _launch(self, lane: Lane, taken: Taken, *, staged: bool = False) -> None:
        """Hand a taken batch to the worker's thread (one hand-off each way per batch)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        launched = Launched(taken[0], taken[1], now, loop.create_future(), staged,
                            time.monotonic() - now)  # fmt: skip
        lane.unbooked.append(launched)
        try:
            lane.executor.submit(self._run_batch, loop, lane, launched)
        except RuntimeError as exc:  # the executor was shut down: nothing more to stage
            self._finish(lane, launched, BatchResult([exc] * len(launched.batch)), stage=False)

    def _run_batch(self, loop: asyncio.AbstractEventLoop, lane: Lane, launched: Launched) -> None:
        """In the worker's thread: execute, then hand the results to the loop in one call
        that answers the requests before anything else (metrics, the next batch) runs."""
        if launched.staged:
            launched.batch, expired = lanes.still_wanted(launched)
            if expired:  # answered now, not after the rest of the batch computes
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lanes.answer_expired, self.name, launched, expired)
        batch = launched.batch
        result = BatchResult([])  # a staged batch left with nothing to compute
        try:
            if batch:
                with held_by(self._cores, lane.runner):
                    result = execute(
                        lane.runner,
                        [p.inputs for p in batch],
                        batches=self.policy.batches,
                        padding=self.policy.padding,
                        lengths=[p.length for p in batch],
                    )
        except Exception as exc:  # execute reports failures per request; this is a bug
            result = BatchResult([exc] * len(batch))
        # Closed loop: the server is gone, and nobody waits for these results.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._finish, lane, launched, result)

    def _finish(
        self, lane: Lane, launched: Launched, result: BatchResult, *, stage: bool = True
    ) -> None:
        """On the loop: answer the batch's requests; hand the idle worker a whole batch at
        once (its task's turn would idle the thread; a partial one gathers more meanwhile),
        or stage one; wake its task for the bookkeeping, after the answers' handlers."""
        ended = asyncio.get_running_loop().time()
        began = launched.started_at or launched.launched_at  # a staged batch's own start
        if launched.batch:
            lane.last_compute_s = result.compute_s
        launched.computed = True
        self._deliver(launched.batch, result, lane.runner, free=not lane.computing)
        if stage and not lane.computing and self._queue.queued_samples >= self._whole_batch:
            taken = self._take_now(lane.runner, waited=False)
            if isinstance(taken, tuple):
                self._launch(lane, taken)
        if stage:
            self._stage(lane)
        if not launched.finished.done():
            launched.finished.set_result((result, began, ended))

    def _deliver(
        self, batch: list[Pending], result: BatchResult, runner: BatchRunner, *, free: bool
    ) -> None:
        """Answer each request of the batch with its outputs or its failure; the worker
        counts as free from here unless another batch of its is queued (a request its
        answer sets off may go to another)."""
        if free:
            self._workers.freed(runner.label)
        answered = self._strategy.answered if self._strategy.per_request else None
        lanes.answer(self.name, batch, result, device=runner.device, answered=answered)
