"""The batcher's semantics (DESIGN.md "Batching semantics"), one test per rule: how batches
form. A full batch goes at once, the queue delay counts from the oldest request, batches count
samples up to max_batch_size and prefer the largest preferred size, only requests of one
shape share a batch, every worker pulls from the one queue, a model without batching runs
each request alone, and higher priorities go first, FIFO within a level.

The runner is tests/batcher_helpers.py's GatedRunner: queue states are reached by
synchronisation, never by sleeping.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.batching import Batcher, BatchObserver, BatchReport
from app.errors import InvalidInputError
from tests.batcher_helpers import (
    GatedRunner,
    held_batcher,
    policy,
    rows,
    run,
    started_batcher,
    until,
)


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


def test_requests_are_answered_before_the_batch_bookkeeping_runs() -> None:
    # The worker's metrics come after the answer, not in front of it: each runs in a turn of
    # the loop, and the handler waiting for its outputs should not wait behind them.
    events: list[str] = []

    class Recording(BatchObserver):
        def batch_executed(self, report: BatchReport) -> None:
            events.append("bookkept")

    async def answered(batcher: Batcher) -> None:
        await batcher.infer(rows(1))
        events.append("answered")

    async def scenario() -> None:
        batcher = Batcher("m/1", policy(), [GatedRunner()], observer=Recording())
        batcher.start()
        await answered(batcher)
        await until(lambda: len(events) == 2)
        assert events == ["answered", "bookkept"]
        await batcher.close()

    run(scenario)
