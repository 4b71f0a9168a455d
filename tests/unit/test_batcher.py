"""The batcher's semantics (DESIGN.md "Batching semantics"), one test per rule.

The runner here is a real in-process model (y = 2x + 1 per element) whose thread can be held at
a gate, so queue states are reached by synchronisation, never by sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pytest

from app.batching import Batcher, BatchingPolicy, BatchObserver, BatchReport
from app.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)

T = TypeVar("T")
WAIT_S = 10.0  # upper bound for anything that should happen promptly


@dataclass
class GatedRunner:
    """Computes y = 2x + 1; records every batch; can hold its thread until released."""

    label: str = "cpu/0"
    device: str = "cpu"
    gated: bool = False
    fail_when: Callable[[np.ndarray], bool] | None = None
    batches: list[np.ndarray] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    gate: threading.Event = field(default_factory=threading.Event)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.started_at.append(time.monotonic())  # the default event loop's clock
        self.batches.append(x.copy())
        self.started.release()
        if self.gated:
            assert self.gate.wait(WAIT_S), "test never released the gate"
        if self.fail_when is not None and self.fail_when(x):
            raise RuntimeError("bad value in batch")
        return {"y": x * 2 + 1}

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, WAIT_S), "runner never ran"


def policy(**overrides: object) -> BatchingPolicy:
    values: dict[str, object] = {"max_batch_size": 8, "max_queue_size": 100}
    values.update(overrides)
    return BatchingPolicy(**values)  # type: ignore[arg-type]


def rows(n: int, start: float = 0.0, width: int = 3) -> dict[str, np.ndarray]:
    x = np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)
    return {"x": x}


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), WAIT_S * 2)

    return asyncio.run(bounded())


async def started_batcher(runners: list[GatedRunner], **policy_overrides: object) -> Batcher:
    batcher = Batcher("m/1", policy(**policy_overrides), runners)
    batcher.start()
    return batcher


async def held_batcher(
    **policy_overrides: object,
) -> tuple[GatedRunner, Batcher, asyncio.Future[dict[str, np.ndarray]]]:
    """A started batcher whose one worker is held computing a first request (`head`), so
    what is sent next stays queued until the test opens `runner.gate`."""
    runner = GatedRunner(gated=True)
    batcher = await started_batcher([runner], **policy_overrides)
    head = asyncio.ensure_future(batcher.infer(rows(1)))
    await runner.wait_started()
    return runner, batcher, head


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


def test_single_request_returns_its_own_outputs() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = await started_batcher([runner])
        out = await batcher.infer(rows(2))
        np.testing.assert_array_equal(out["y"], rows(2)["x"] * 2 + 1)
        await batcher.close()

    run(scenario)


def test_a_full_batch_does_not_wait_for_the_queue_delay() -> None:
    # A 60 s delay would time the test out if the batcher waited on it with a full batch.
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = await started_batcher(
            [runner], max_queue_delay_s=60.0, preferred_batch_sizes=(4,)
        )
        results = await asyncio.gather(*(batcher.infer(rows(1, start=i)) for i in range(4)))
        assert [b.shape[0] for b in runner.batches] == [4]
        assert len(results) == 4
        await batcher.close()

    run(scenario)


def test_queue_delay_is_measured_from_the_oldest_request() -> None:
    delay = 0.3

    async def scenario() -> None:
        runner = GatedRunner()
        batcher = await started_batcher([runner], max_queue_delay_s=delay)
        loop = asyncio.get_running_loop()
        first_at = loop.time()
        first = asyncio.ensure_future(batcher.infer(rows(1)))
        await asyncio.sleep(delay / 2)
        second_at = loop.time()
        second = asyncio.ensure_future(batcher.infer(rows(1, start=10)))
        await asyncio.gather(first, second)
        assert [b.shape[0] for b in runner.batches] == [2]
        ran_at = runner.started_at[0]
        assert ran_at >= first_at + delay
        assert ran_at < second_at + delay  # not restarted by the second arrival
        await batcher.close()

    run(scenario)


def test_batches_count_samples_and_never_exceed_max_batch_size() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(max_batch_size=8)
        queued = [asyncio.ensure_future(batcher.infer(rows(3, start=i * 100))) for i in range(4)]
        await until(lambda: batcher.depth == 4)
        runner.gate.set()
        results = await asyncio.gather(head, *queued)
        assert [b.shape[0] for b in runner.batches] == [1, 6, 6]
        for i, result in enumerate(results[1:]):
            np.testing.assert_array_equal(result["y"], rows(3, start=i * 100)["x"] * 2 + 1)
        await batcher.close()

    run(scenario)


def test_preferred_sizes_take_the_largest_that_can_be_formed() -> None:
    async def scenario() -> None:
        runner = GatedRunner(gated=True)
        batcher = await started_batcher([runner], max_batch_size=8, preferred_batch_sizes=(4,))
        head = asyncio.ensure_future(batcher.infer(rows(1)))
        await runner.wait_started()
        queued = [asyncio.ensure_future(batcher.infer(rows(1, start=i))) for i in range(6)]
        await until(lambda: batcher.depth == 6)
        runner.gate.set()
        await asyncio.gather(head, *queued)
        assert [b.shape[0] for b in runner.batches] == [1, 4, 2]
        await batcher.close()

    run(scenario)


def test_a_request_above_max_batch_size_is_refused_naming_the_limit() -> None:
    async def scenario() -> None:
        batcher = await started_batcher([GatedRunner()], max_batch_size=8)
        with pytest.raises(InvalidInputError, match=r"9 samples .* at most 8 .*max_batch_size"):
            await batcher.infer(rows(9))
        assert batcher.depth == 0
        await batcher.close()

    run(scenario)


def test_inputs_that_disagree_on_batch_size_are_refused() -> None:
    async def scenario() -> None:
        batcher = await started_batcher([GatedRunner()])
        inputs = {"x": np.zeros((2, 3), np.float32), "z": np.zeros((3, 3), np.float32)}
        with pytest.raises(InvalidInputError, match="disagree on the batch size"):
            await batcher.infer(inputs)
        await batcher.close()

    run(scenario)


def test_a_full_queue_refuses_at_once_and_serves_the_queued() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(max_queue_size=2)
        queued = [asyncio.ensure_future(batcher.infer(rows(1, start=i))) for i in (1, 2)]
        await until(lambda: batcher.depth == 2)
        with pytest.raises(OverloadedError, match="queue is full") as refused:
            await batcher.infer(rows(1, start=3))
        assert refused.value.retry_after_s > 0
        assert not any(q.done() for q in queued)
        runner.gate.set()
        await asyncio.gather(head, *queued)
        await batcher.close()

    run(scenario)


def test_the_queue_is_bounded_in_bytes_and_frees_them_as_requests_leave() -> None:
    # rows(2) is 2 x 3 float32 = 24 bytes; a 60-byte bound holds two of them, not three.
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(max_queue_bytes=60)
        queued = [asyncio.ensure_future(batcher.infer(rows(2, start=i))) for i in (1, 2)]
        await until(lambda: batcher.depth == 2)
        assert batcher.queued_bytes == 48
        with pytest.raises(OverloadedError, match="48 bytes of inputs waiting, limit 60"):
            await batcher.infer(rows(2, start=3))
        with pytest.raises(OverloadedError, match="bytes of inputs waiting"):
            batcher.check_admission(incoming_bytes=13)  # a body announced before it is read
        batcher.check_admission(incoming_bytes=12)  # fits exactly
        runner.gate.set()
        await asyncio.gather(head, *queued)
        assert batcher.queued_bytes == 0
        await batcher.close()

    run(scenario)


def test_the_queue_is_bounded_in_samples() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(max_queue_samples=5)
        queued = [asyncio.ensure_future(batcher.infer(rows(n))) for n in (2, 2)]
        await until(lambda: batcher.depth == 2)
        with pytest.raises(OverloadedError, match="4 samples waiting, limit 5"):
            await batcher.infer(rows(2))
        one_more = asyncio.ensure_future(batcher.infer(rows(1)))  # fits exactly
        await until(lambda: batcher.depth == 3)
        runner.gate.set()
        await asyncio.gather(head, *queued, one_more)
        await batcher.close()

    run(scenario)


def test_a_request_larger_than_the_byte_bound_is_admitted_to_an_empty_queue() -> None:
    # Otherwise it could never be served at all; the body limit is what caps its size.
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = await started_batcher([runner], max_queue_bytes=8)
        out = await batcher.infer(rows(4))
        np.testing.assert_array_equal(out["y"], rows(4)["x"] * 2 + 1)
        await batcher.close()

    run(scenario)


def test_cancelled_and_expired_requests_give_their_bytes_back() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(max_queue_bytes=1000)
        cancelled = asyncio.ensure_future(batcher.infer(rows(2)))
        expiring = asyncio.ensure_future(batcher.infer(rows(2), timeout_s=0.01))
        await until(lambda: batcher.queued_bytes == 48)
        cancelled.cancel()
        with pytest.raises(DeadlineExceededError):
            await expiring
        await until(lambda: batcher.queued_bytes == 0)
        runner.gate.set()
        await head
        await batcher.close()

    run(scenario)


def test_requests_with_different_non_batch_shapes_never_share_a_batch() -> None:
    async def scenario() -> None:
        runner = GatedRunner(gated=True)
        batcher = await started_batcher([runner])
        head = asyncio.ensure_future(batcher.infer(rows(1, width=5)))
        await runner.wait_started()
        widths = [4, 5, 4, 5, 4]
        queued = [asyncio.ensure_future(batcher.infer(rows(1, width=w))) for w in widths]
        await until(lambda: batcher.depth == 5)
        runner.gate.set()
        results = await asyncio.gather(head, *queued)
        # Oldest group (width 4) first, FIFO within it; then the width-5 group.
        assert [b.shape for b in runner.batches] == [(1, 5), (3, 4), (2, 5)]
        for width, result in zip(widths, results[1:], strict=True):
            assert result["y"].shape == (1, width)
        await batcher.close()

    run(scenario)


def test_every_worker_pulls_from_the_same_queue() -> None:
    async def scenario() -> None:
        slow = GatedRunner(label="cpu/0", gated=True)
        fast = GatedRunner(label="cpu/1")
        batcher = await started_batcher([slow, fast])
        held = asyncio.ensure_future(batcher.infer(rows(1)))
        await slow.wait_started()
        # While the slow worker is held, the other one serves everything else.
        for i in range(5):
            await batcher.infer(rows(1, start=i))
        assert sum(b.shape[0] for b in fast.batches) == 5
        assert not held.done()
        slow.gate.set()
        await held
        await batcher.close()

    run(scenario)


def test_a_cancelled_queued_request_is_never_computed() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher()
        doomed = asyncio.ensure_future(batcher.infer(rows(1, start=-500)))
        kept = asyncio.ensure_future(batcher.infer(rows(1, start=7)))
        await until(lambda: batcher.depth == 2)
        doomed.cancel()
        runner.gate.set()
        await asyncio.gather(head, kept)
        seen = np.concatenate(runner.batches)
        assert not (seen == -500).any()
        assert batcher.depth == 0
        await batcher.close()

    run(scenario)


def test_a_failed_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    async def scenario() -> None:
        runner = GatedRunner(fail_when=lambda x: bool((x < 0).any()))
        batcher = await started_batcher([runner])
        with pytest.raises(InferenceFailedError, match="bad value in batch"):
            await batcher.infer(rows(1, start=-10))
        out = await batcher.infer(rows(1))
        np.testing.assert_array_equal(out["y"], rows(1)["x"] * 2 + 1)
        await batcher.close()

    run(scenario)


def test_close_serves_queued_requests_then_refuses_new_ones() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher()
        queued = [asyncio.ensure_future(batcher.infer(rows(1, start=i))) for i in range(3)]
        await until(lambda: batcher.depth == 3)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(UnavailableError, match="shutting down"):
            await batcher.infer(rows(1))
        runner.gate.set()
        await asyncio.gather(head, *queued, closing)
        assert sum(b.shape[0] for b in runner.batches) == 4

    run(scenario)


def test_a_model_without_batching_runs_each_request_alone() -> None:
    async def scenario() -> None:
        runner = GatedRunner(gated=True)
        batcher = await started_batcher([runner], max_batch_size=0)
        head = asyncio.ensure_future(batcher.infer(rows(2)))
        await runner.wait_started()
        queued = [asyncio.ensure_future(batcher.infer(rows(3, start=i))) for i in range(3)]
        await until(lambda: batcher.depth == 3)
        runner.gate.set()
        await asyncio.gather(head, *queued)
        assert [b.shape[0] for b in runner.batches] == [2, 3, 3, 3]
        await batcher.close()

    run(scenario)


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher()
        late = asyncio.ensure_future(batcher.infer(rows(1, start=-700), timeout_s=0.05))
        patient = asyncio.ensure_future(batcher.infer(rows(1, start=5), timeout_s=60))
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            await late  # answered while the worker is still held: the batcher woke for it
        assert batcher.depth == 1
        runner.gate.set()
        await asyncio.gather(head, patient)
        seen = np.concatenate(runner.batches)
        assert not (seen == -700).any()
        await batcher.close()

    run(scenario)


def test_a_cancelled_request_leaves_the_queue_at_once() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(max_queue_size=2)
        queued = [asyncio.ensure_future(batcher.infer(rows(1, start=i))) for i in (1, 2)]
        await until(lambda: batcher.depth == 2)
        queued[0].cancel()
        await until(lambda: batcher.depth == 1)
        batcher.check_admission()  # room again for one more
        runner.gate.set()
        await asyncio.gather(head, queued[1])
        await batcher.close()

    run(scenario)


def test_one_failing_request_fails_alone_in_its_batch() -> None:
    class Reports(BatchObserver):
        def __init__(self) -> None:
            self.reports: list[BatchReport] = []

        def batch_executed(self, report: BatchReport) -> None:
            self.reports.append(report)

    async def scenario() -> None:
        runner = GatedRunner(gated=True, fail_when=lambda x: bool((x < 0).any()))
        observer = Reports()
        batcher = Batcher("m/1", policy(), [runner], observer=observer)
        batcher.start()
        head = asyncio.ensure_future(batcher.infer(rows(1)))
        await runner.wait_started()
        starts = [10, -50, 20, 30, 40]
        queued = [asyncio.ensure_future(batcher.infer(rows(1, start=s))) for s in starts]
        await until(lambda: batcher.depth == 5)
        runner.gate.set()
        results = await asyncio.gather(head, *queued, return_exceptions=True)
        for start, result in zip(starts, results[1:], strict=True):
            if start < 0:
                assert isinstance(result, InferenceFailedError)
                assert "bad value in batch" in result.message
            else:
                assert isinstance(result, dict)
                np.testing.assert_array_equal(result["y"], rows(1, start=start)["x"] * 2 + 1)
        batched = observer.reports[1]
        assert (batched.samples, batched.failed_samples) == (5, 1)
        await batcher.close()

    run(scenario)


def test_higher_priority_goes_first_and_each_level_is_fifo() -> None:
    async def scenario() -> None:
        runner, batcher, head = await held_batcher(
            max_batch_size=1, priority_levels=3, default_priority=3
        )
        sent = [(None, 100), (2, 200), (1, 300), (2, 400), (1, 500), (0, 600)]
        queued = [
            asyncio.ensure_future(batcher.infer(rows(1, start=s), priority=p)) for p, s in sent
        ]
        await until(lambda: batcher.depth == len(sent))
        with pytest.raises(InvalidInputError, match="priority 4 is out of range"):
            await batcher.infer(rows(1), priority=4)
        runner.gate.set()
        await asyncio.gather(head, *queued)
        order = [int(b[0, 0]) for b in runner.batches[1:]]
        assert order == [300, 500, 200, 400, 100, 600]  # level 1, then 2, then the default 3
        await batcher.close()

    run(scenario)
