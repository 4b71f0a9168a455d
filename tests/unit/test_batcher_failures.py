"""The batcher's semantics (DESIGN.md "Batching semantics"), one test per rule: requests
that do not end in a plain answer. A cancelled or expired request leaves the queue at once,
gives its bytes back and is never computed; a failed batch fails its requests and the worker
goes on, a failing request failing alone in its batch; close serves what is queued, then
refuses new requests.

The runner is tests/batcher_helpers.py's GatedRunner: queue states are reached by
synchronisation, never by sleeping.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.batching import Batcher, BatchObserver, BatchReport
from app.errors import DeadlineExceededError, InferenceFailedError, UnavailableError
from tests.batcher_helpers import (
    GatedRunner,
    held_batcher,
    policy,
    rows,
    run,
    started_batcher,
    until,
)


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
