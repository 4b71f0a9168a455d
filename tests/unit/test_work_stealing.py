"""Workers of different speeds on one queue (a GPU beside CPU instances, or a fast GPU beside
a slow one): a worker takes requests only when it is free to start them, so a slow device
never holds queued requests that a fast one could take, and the fast one takes most batches.
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

from app.batching import Batcher, BatchingPolicy
from app.batching.wakeups import REMEASURE_AFTER_S, Workers

T = TypeVar("T")
WAIT_S = 10.0


@dataclass
class Runner:
    """y = x + 1; records its batches; `gated` holds its thread until `gate` opens, and
    `compute_s` stands for the time a slower device spends on each batch."""

    label: str
    device: str = "cpu"
    gated: bool = False
    compute_s: float = 0.0
    #: Batch number (from 0) that stalls for `stall_s` on top of its compute time.
    stall_at: int | None = None
    stall_s: float = 0.0
    batches: list[int] = field(default_factory=list)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    gate: threading.Event = field(default_factory=threading.Event)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.shape[0])
        self.started.release()
        if self.gated:
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        if self.compute_s:
            time.sleep(self.compute_s)  # the device's compute time, not synchronisation
        if len(self.batches) - 1 == self.stall_at:
            time.sleep(self.stall_s)  # a stall of the device or the process
        return {"y": x + 1}

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, WAIT_S), "never ran"


def rows(start: int, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), WAIT_S * 2)

    return asyncio.run(bounded())


async def woken_of(workers: Workers, labels: list[str]) -> str:
    """Which of `labels`, all asleep, `workers` wakes for one arrival."""
    sleeping = {label: asyncio.ensure_future(workers.sleep(label)) for label in labels}
    await asyncio.sleep(0)  # each sleeper has queued its wake-up
    workers.wake_one()
    done, _ = await asyncio.wait(sleeping.values(), return_when=asyncio.FIRST_COMPLETED)
    (woken,) = [label for label, task in sleeping.items() if task in done]
    for task in sleeping.values():
        task.cancel()
    await asyncio.gather(*sleeping.values(), return_exceptions=True)
    return woken


def test_a_busy_slow_worker_holds_only_the_batch_it_is_computing() -> None:
    async def scenario() -> None:
        slow, fast = Runner("cuda:1/0", gated=True), Runner("cuda:0/0", gated=True)
        batcher = Batcher("m/1", BatchingPolicy(max_batch_size=4, max_queue_size=100), [slow, fast])
        batcher.start()
        # Each worker starts one request and is held there (idle workers are woken in the
        # order they went idle: the slow one, listed first, takes the first request).
        first = [asyncio.ensure_future(batcher.infer(rows(0)))]
        await slow.wait_started()
        first.append(asyncio.ensure_future(batcher.infer(rows(1))))
        await fast.wait_started()
        # Forty more arrive while both are busy: they wait in the queue, taken by no one.
        rest = [asyncio.ensure_future(batcher.infer(rows(100 + i))) for i in range(40)]
        await asyncio.sleep(0)
        assert batcher.depth == 40
        # The fast device frees up and drains the whole queue while the slow one still
        # computes its first request: none of the forty waited for the slow device.
        fast.gated = False
        fast.gate.set()
        results = await asyncio.gather(*rest)
        assert [r["y"][0, 0] for r in results] == [101.0 + i for i in range(40)]
        assert slow.batches == [1]
        assert sum(fast.batches[1:]) == 40 and max(fast.batches) == 4
        assert batcher.depth == 0
        assert sum(f.done() for f in first) == 1  # the slow one's is still computing
        slow.gate.set()
        await asyncio.gather(*first)
        await batcher.close()

    run(scenario)


def test_the_fast_worker_takes_most_batches_under_load() -> None:
    async def scenario() -> None:
        slow = Runner("cpu/0", compute_s=0.02)  # 20 ms a batch
        fast = Runner("cuda:0/0")  # as fast as the hand-off allows
        batcher = Batcher(
            "m/1", BatchingPolicy(max_batch_size=4, max_queue_size=1000), [slow, fast]
        )
        batcher.start()

        results = await asyncio.gather(*(batcher.infer(rows(i)) for i in range(400)))

        assert [r["y"][0, 0] for r in results] == [1.0 + i for i in range(400)]
        assert sum(slow.batches) + sum(fast.batches) == 400
        # The slow worker gets a batch only when it is free: a few in the time the fast
        # one takes for the rest.
        assert sum(fast.batches) >= 0.8 * 400, (slow.batches, len(fast.batches))
        assert len(slow.batches) < len(fast.batches) / 4
        await batcher.close()

    run(scenario)


def test_at_low_load_the_fast_worker_takes_nearly_every_request() -> None:
    """One request at a time, both workers idle each time: the one that computes fastest
    is woken, not the one idle longest (which alternated them: half the requests paid the
    slow worker's time). Each worker is tried once, then the fast one keeps them."""

    async def scenario() -> None:
        slow = Runner("cpu/0", compute_s=0.01)
        fast = Runner("cuda:0/0", compute_s=0.001)
        batcher = Batcher("m/1", BatchingPolicy(max_batch_size=4, max_queue_size=10), [slow, fast])
        batcher.start()
        for i in range(40):
            result = await batcher.infer(rows(i))
            assert result["y"][0, 0] == i + 1.0
        assert len(slow.batches) <= 2, (slow.batches, fast.batches)
        assert len(fast.batches) >= 38
        await batcher.close()

    run(scenario)


@pytest.mark.parametrize(("stall_at", "slow_at_most"), [(4, 2), (0, 3)])
def test_one_stall_of_the_fast_worker_does_not_hand_the_low_load_to_the_slow_one(
    stall_at: int, slow_at_most: int
) -> None:
    """A batch of the fast worker stalls for 200 times its compute time (the process
    descheduled, a device's first run of a shape): it still takes nearly every request
    after. Counted in full, that one batch made it read slower than the slow worker, which
    then took every lone request, and nothing measured the fast one again. Its first batch
    (stall_at 0) has no usual cost to be capped by: the lower of the first two counts, and
    each worker's first two batches are its own measurement."""

    async def scenario() -> None:
        slow = Runner("cpu/0", compute_s=0.01)
        fast = Runner("cuda:0/0", compute_s=0.001, stall_at=stall_at, stall_s=0.2)
        batcher = Batcher("m/1", BatchingPolicy(max_batch_size=4, max_queue_size=10), [slow, fast])
        batcher.start()
        for i in range(40):
            assert (await batcher.infer(rows(i)))["y"][0, 0] == i + 1.0
        assert len(fast.batches) > stall_at, "the stall never happened"
        assert len(slow.batches) <= slow_at_most, (slow.batches, fast.batches)
        await batcher.close()

    run(scenario)


def test_a_lasting_slowdown_of_a_worker_still_shows_in_its_cost() -> None:
    """Stalls count only so much, but a worker that stays slower is seen to be: a few
    batches at three times the other worker's time and the other is woken first."""

    async def scenario() -> None:
        workers = Workers(["cuda:0/0", "cpu/0"])
        for _ in range(2):  # the first two batches start the average
            workers.observe_cost("cuda:0/0", 0.001)
            workers.observe_cost("cpu/0", 0.01)
        assert await woken_of(workers, ["cpu/0", "cuda:0/0"]) == "cuda:0/0"
        for _ in range(10):
            workers.observe_cost("cuda:0/0", 0.03)
        assert await woken_of(workers, ["cuda:0/0", "cpu/0"]) == "cpu/0"

    run(scenario)


def test_a_worker_passed_over_since_a_slowdown_is_measured_again() -> None:
    """At low load only the worker woken is measured: one that slowed down for a spell
    would stay passed over for as long as the load stays low. Once it has not run for
    REMEASURE_AFTER_S it is judged by its best again, and one faster batch brings it back;
    one still slow waits out another spell. A worker that is simply slower is never woken
    for it."""

    async def scenario() -> None:
        now = [0.0]
        workers = Workers(["cuda:0/0", "cpu/0"], clock=lambda: now[0])
        for _ in range(2):  # the first two batches start the averages
            workers.observe_cost("cuda:0/0", 0.001)
            workers.observe_cost("cpu/0", 0.01)
        for _ in range(10):  # a spell three times slower than the CPU
            workers.observe_cost("cuda:0/0", 0.03)
        assert await woken_of(workers, ["cuda:0/0", "cpu/0"]) == "cpu/0"
        now[0] += REMEASURE_AFTER_S - 0.5
        workers.observe_cost("cpu/0", 0.01)  # the CPU takes the lone requests meanwhile
        assert await woken_of(workers, ["cuda:0/0", "cpu/0"]) == "cpu/0"
        now[0] += 0.5
        assert await woken_of(workers, ["cpu/0", "cuda:0/0"]) == "cuda:0/0"
        workers.observe_cost("cuda:0/0", 0.03)  # still slow: the CPU's again, for a spell
        assert await woken_of(workers, ["cuda:0/0", "cpu/0"]) == "cpu/0"
        now[0] += REMEASURE_AFTER_S
        assert await woken_of(workers, ["cpu/0", "cuda:0/0"]) == "cuda:0/0"
        workers.observe_cost("cuda:0/0", 0.001)  # recovered: it keeps the work from now
        assert workers.cost["cuda:0/0"] == pytest.approx(0.001)
        for _ in range(3):
            now[0] += REMEASURE_AFTER_S
            assert await woken_of(workers, ["cuda:0/0", "cpu/0"]) == "cuda:0/0"
            workers.observe_cost("cuda:0/0", 0.001)

    run(scenario)


def held_pair_beside_a_low_load_worker(
    solo_compute_s: float = 0.0,
) -> tuple[Runner, Runner, Runner, Batcher]:
    """A started batcher of one sample a batch: cpu/0 and cpu/1 held at their gates (on
    their first batch), cpu/2 low-load-only."""
    a, b = Runner("cpu/0", gated=True), Runner("cpu/1", gated=True)
    solo = Runner("cpu/2", compute_s=solo_compute_s)
    batcher = Batcher(
        "m/1", BatchingPolicy(max_batch_size=1, max_queue_size=100), [a, b, solo],
        low_load_only=["cpu/2"],
    )  # fmt: skip
    batcher.start()
    return a, b, solo, batcher


def release(*runners: Runner) -> None:
    for runner in runners:
        runner.gated = False
        runner.gate.set()


def test_a_low_load_only_worker_stands_aside_while_another_computes() -> None:
    """`low_load_only` workers (one session with every core's threads beside 1-thread ones)
    take a batch only while no other worker computes: with both others busy, queued work
    waits for them rather than oversubscribing the cores; at low load the fast low-load
    worker answers nearly every request."""

    async def scenario() -> None:
        a, b, solo, batcher = held_pair_beside_a_low_load_worker(solo_compute_s=0.001)
        # A burst of three: the low-load worker, woken for the first, finds three queued and
        # passes them on; a and b take one each, and the third waits for them.
        burst = [asyncio.ensure_future(batcher.infer(rows(i))) for i in range(3)]
        await a.wait_started()
        await b.wait_started()
        rest = [asyncio.ensure_future(batcher.infer(rows(100 + i))) for i in range(10)]
        await asyncio.sleep(0)
        assert batcher.depth == 11 and solo.batches == []
        release(a, b)
        results = await asyncio.gather(*burst, *rest)
        assert [r["y"][0, 0] for r in results] == [1.0, 2.0, 3.0] + [101.0 + i for i in range(10)]

        a.compute_s = b.compute_s = 0.01
        before = len(solo.batches)
        for i in range(40):
            assert (await batcher.infer(rows(i)))["y"][0, 0] == i + 1.0
        assert len(solo.batches) - before >= 38, (a.batches, b.batches, solo.batches)
        await batcher.close()

    run(scenario)


def test_close_ends_a_low_load_only_worker_that_stood_aside_for_the_queue() -> None:
    """Closing with requests queued while the others compute: the low-load worker, woken by
    the close, finds them queued and stands aside; the others serve them and stop, and the
    low-load worker stops too instead of waiting for a wake-up that never comes (a drain,
    or an unload, that never ended)."""

    async def scenario() -> None:
        a, b, solo, batcher = held_pair_beside_a_low_load_worker()
        queued = [asyncio.ensure_future(batcher.infer(rows(i))) for i in range(6)]
        await a.wait_started()
        await b.wait_started()
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)  # the close wakes every idle worker: cpu/2 looks, stands aside
        release(a, b)
        results = await asyncio.gather(*queued)
        assert [r["y"][0, 0] for r in results] == [1.0 + i for i in range(6)]
        await asyncio.wait_for(closing, WAIT_S)
        assert solo.batches == []

    run(scenario)


def test_a_lone_request_wakes_the_low_load_worker_whatever_the_others_cost() -> None:
    """The 2x1 workers' cost per sample, learnt from batches of 4 under load, reads lower
    than the low-load worker's from lone requests; a lone request still goes to the
    low-load worker, and a 1-thread worker back from its batch leaves one to it. With two
    queued it may not take them: the cheapest other worker is woken."""

    async def scenario() -> None:
        depth = 1
        workers = Workers(["cpu/0", "cpu/1", "cpu/2"], low_load_only=["cpu/2"],
                          depth=lambda: depth)  # fmt: skip
        for label, cost in (("cpu/0", 0.005), ("cpu/1", 0.004), ("cpu/2", 0.012)) * 2:
            workers.observe_cost(label, cost)

        assert await woken_of(workers, ["cpu/0", "cpu/1", "cpu/2"]) == "cpu/2"
        sleeping = asyncio.ensure_future(workers.sleep("cpu/2"))
        await asyncio.sleep(0)
        assert workers.leave_to_faster("cpu/0")  # and cpu/2 is woken for it
        await asyncio.wait_for(sleeping, WAIT_S)
        depth = 2
        assert await woken_of(workers, ["cpu/0", "cpu/1", "cpu/2"]) == "cpu/1"
        assert not workers.leave_to_faster("cpu/0")

    run(scenario)


def test_low_load_only_must_name_a_worker() -> None:
    try:
        Batcher("m/1", BatchingPolicy(4, 10), [Runner("cpu/0")], low_load_only=["x"])
    except ValueError as exc:
        assert "names no runner" in str(exc)
    else:
        raise AssertionError("an unknown low-load worker was accepted")
