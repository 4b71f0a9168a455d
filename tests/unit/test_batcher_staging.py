"""Staged batches (app/batching/lanes.py): under load a worker's next batch is queued on its
thread while it computes, so the thread goes on to it without a turn of the event loop; a
staged request whose deadline passes or whose caller goes away before it starts is not
computed; and a model whose batches compute in microseconds stages only when two whole
batches wait (overload), never a batch that could still grow.

The runner computes y = 2x + 1 and holds each batch until the test gives it a permit, so
every state is reached by synchronisation. Blocking the event loop on purpose (a plain
threading wait inside the coroutine) is how a test shows that something happened without a
turn of the loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from app.batching import Batcher
from app.errors import DeadlineExceededError
from tests.batcher_helpers import WAIT_S, policy, rows, run


@dataclass
class SteppedRunner:
    """Each batch waits for its own permit (`step`) before it computes."""

    label: str = "cpu/0"
    device: str = "cpu"
    batches: list[np.ndarray] = field(default_factory=list)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    permits: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs["x"].copy())
        self.started.release()
        assert self.permits.acquire(timeout=WAIT_S), "test never let the batch compute"
        return {"y": inputs["x"] * 2 + 1}

    def step(self) -> None:
        self.permits.release()

    async def next_computes(self) -> None:
        """Let the current batch end, and wait until the worker starts its next one."""
        self.step()
        await self.wait_started()

    def began(self, timeout: float = WAIT_S) -> bool:
        """Block until the next batch starts in the thread (the loop does not run)."""
        return self.started.acquire(timeout=timeout)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.began), "no batch started"


async def busy_worker(
    runner: SteppedRunner, stage_after_s: float, max_batch_size: int = 1
) -> tuple[Batcher, asyncio.Future[dict[str, np.ndarray]]]:
    """A batcher (batches of one request unless `max_batch_size` is larger) whose worker
    computes a first request `head`, held until the test steps it."""
    batcher = Batcher("m/1", policy(max_batch_size=max_batch_size), [runner])
    batcher.stage_after_s = stage_after_s
    batcher.start()
    head = asyncio.ensure_future(batcher.infer(rows(1)))
    await runner.wait_started()
    return batcher, head


def test_a_busy_workers_next_batch_starts_without_a_turn_of_the_loop() -> None:
    async def scenario() -> None:
        runner = SteppedRunner()
        batcher, head = await busy_worker(runner, stage_after_s=0.0)
        second = batcher.submit(rows(1, start=10))
        third = batcher.submit(rows(1, start=20))
        await runner.next_computes()  # head ends: the second computes, the third is staged
        await asyncio.wait_for(head, WAIT_S)
        # The loop is blocked from here: the third can only start if it is already staged.
        runner.step()
        assert runner.began(), "the staged batch did not start while the loop was blocked"
        runner.step()
        results = await asyncio.gather(second, third)
        for start, result in zip((10, 20), results, strict=True):
            np.testing.assert_array_equal(result["y"], rows(1, start=start)["x"] * 2 + 1)
        assert len(runner.batches) == 3
        await batcher.close()

    run(scenario)


def test_without_staging_the_next_batch_waits_for_the_loop() -> None:
    # The same scenario on a model whose batches compute in microseconds (the default
    # threshold): nothing is staged, so with the loop blocked the third does not start.
    async def scenario() -> None:
        runner = SteppedRunner()
        batcher, head = await busy_worker(runner, stage_after_s=3600.0)
        second = batcher.submit(rows(1, start=10))
        third = batcher.submit(rows(1, start=20))
        await runner.next_computes()
        await asyncio.wait_for(head, WAIT_S)
        runner.step()  # the second ends, with the loop blocked
        assert not runner.began(timeout=0.3), "a batch started without the loop"
        await asyncio.wait_for(second, WAIT_S)  # the loop runs: the third is taken now
        await runner.wait_started()
        runner.step()
        await asyncio.wait_for(third, WAIT_S)
        await batcher.close()

    run(scenario)


def test_a_staged_request_past_its_deadline_is_answered_504_uncomputed() -> None:
    async def scenario() -> None:
        runner = SteppedRunner()
        batcher, head = await busy_worker(runner, stage_after_s=0.0)
        loop = asyncio.get_running_loop()
        second = batcher.submit(rows(1, start=10))
        deadline = loop.time() + 0.2
        late = batcher.submit(rows(1, start=20), deadline=deadline)
        await runner.next_computes()  # head ends: the second computes, `late` staged behind
        await asyncio.sleep(deadline + 0.01 - loop.time())  # it passes while staged
        assert loop.time() > deadline
        assert not late.done()  # out of the queue: its timer no longer answers it
        runner.step()
        await asyncio.wait_for(second, WAIT_S)
        with pytest.raises(DeadlineExceededError, match="not computed"):
            await asyncio.wait_for(late, WAIT_S)
        await asyncio.wait_for(head, WAIT_S)
        assert [float(b[0, 0]) for b in runner.batches] == [0.0, 10.0]
        await batcher.close()

    run(scenario)


def test_an_expired_staged_request_is_answered_before_the_rest_of_its_batch_computes() -> None:
    # Batches of two: `late` and `fresh` are staged together; `late`'s deadline passes while
    # they wait. Its 504 must not wait for `fresh`'s batch as well, or it comes two batches
    # past the deadline instead of at most one.
    async def scenario() -> None:
        runner = SteppedRunner()
        batcher = Batcher("m/1", policy(max_batch_size=2), [runner])
        batcher.stage_after_s = 0.0
        batcher.start()
        loop = asyncio.get_running_loop()
        head = asyncio.ensure_future(batcher.infer(rows(2)))
        await runner.wait_started()
        filler = batcher.submit(rows(2, start=10))
        deadline = loop.time() + 0.2
        late = batcher.submit(rows(1, start=20), deadline=deadline)
        fresh = batcher.submit(rows(1, start=30))
        await runner.next_computes()  # head ends: `filler` computes, `late` + `fresh` staged
        await asyncio.sleep(deadline + 0.01 - loop.time())  # it passes while staged
        runner.step()  # `filler` ends: the staged batch starts with `fresh` alone, held
        await runner.wait_started()
        answered, _ = await asyncio.wait({late}, timeout=WAIT_S / 2)
        assert answered, "the expired request waited for the rest of its batch to compute"
        with pytest.raises(DeadlineExceededError, match="not computed"):
            late.result()
        assert not fresh.done()
        runner.step()
        np.testing.assert_array_equal((await fresh)["y"], rows(1, start=30)["x"] * 2 + 1)
        await asyncio.gather(head, filler)
        assert [float(b[0, 0]) for b in runner.batches] == [0.0, 10.0, 30.0]
        await batcher.close()

    run(scenario)


def test_a_staged_request_whose_caller_went_away_is_not_computed() -> None:
    async def scenario() -> None:
        runner = SteppedRunner()
        batcher, head = await busy_worker(runner, stage_after_s=0.0)
        second = batcher.submit(rows(1, start=10))
        gone = batcher.submit(rows(1, start=20))
        after = batcher.submit(rows(1, start=30))
        await runner.next_computes()  # head ends: the second computes, `gone` is staged behind it
        gone.cancel()
        runner.step()
        await asyncio.wait_for(second, WAIT_S)
        await runner.wait_started()  # the next computed batch is the one after `gone`
        runner.step()
        np.testing.assert_array_equal((await after)["y"], rows(1, start=30)["x"] * 2 + 1)
        await asyncio.wait_for(head, WAIT_S)
        assert [float(b[0, 0]) for b in runner.batches] == [0.0, 10.0, 30.0]
        await batcher.close()

    run(scenario)


def test_a_quick_model_stages_when_two_whole_batches_wait() -> None:
    # Under overload the loop's turn bounds a microsecond model's batches: with two whole
    # batches (of 2) queued behind the one computing, the next is staged however quick it is.
    async def scenario() -> None:
        runner = SteppedRunner()
        batcher, head = await busy_worker(runner, stage_after_s=3600.0, max_batch_size=2)
        queued = [batcher.submit(rows(1, start=10 * (i + 1))) for i in range(6)]
        await runner.next_computes()  # head ends: a batch of 2 computes, the next is staged
        await asyncio.wait_for(head, WAIT_S)
        runner.step()  # it ends, with the loop blocked
        assert runner.began(), "the staged batch did not start while the loop was blocked"
        runner.step()
        await runner.wait_started()  # the last two, taken by the loop
        runner.step()
        results = await asyncio.gather(*queued)
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["y"], rows(1, start=10 * (i + 1))["x"] * 2 + 1)
        assert [len(b) for b in runner.batches] == [1, 2, 2, 2]
        await batcher.close()

    run(scenario)
