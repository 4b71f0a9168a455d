"""The batcher's semantics (DESIGN.md "Batching semantics"), one test per rule: what it
admits. A request above max_batch_size, or whose inputs disagree on the batch size, is
refused; a full queue refuses at once and still serves what it holds; the queue is bounded
in requests, bytes and samples, and a request larger than the byte bound still gets into an
empty queue.

The runner is tests/batcher_helpers.py's GatedRunner: queue states are reached by
synchronisation, never by sleeping.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.errors import InvalidInputError, OverloadedError
from tests.batcher_helpers import GatedRunner, held_batcher, rows, run, started_batcher, until


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
