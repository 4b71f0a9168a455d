"""Shared by the batcher tests (tests/unit/test_batcher_*.py): a real in-process model
(y = 2x + 1 per element) whose thread can be held at a gate, so queue states are reached by
synchronisation, never by sleeping; batchers started on it, one of them held computing a
first request; and a bounded way to wait for a condition."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from app.batching import Batcher, BatchingPolicy

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
