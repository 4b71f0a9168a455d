"""app.tuning.timing: the rotation of sessions (interleaved_latencies_ms), the order in which their
calls are timed and that each answer is its own session's median; and sessions timed at
once (time_concurrent)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.tuning.timing import WARM_UP_RUNS, interleaved_latencies_ms, time_concurrent


def test_sessions_are_timed_in_rotation_reversed_every_round() -> None:
    calls: list[str] = []

    def session(name: str, busy_s: float) -> Callable[[dict[str, np.ndarray]], None]:
        def run(feeds: dict[str, np.ndarray]) -> None:
            calls.append(name)
            ends = time.perf_counter() + busy_s
            while time.perf_counter() < ends:  # work, not a wait for something
                pass

        return run

    latencies = interleaved_latencies_ms(
        [session("a", 0.001), session("b", 0.004)], {}, seconds=0.0, least=4
    )
    timed = calls[2 * WARM_UP_RUNS :]
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]
    fast, slow = latencies
    assert 1.0 <= fast < slow
    assert slow >= 4.0


def test_instances_at_once_add_their_own_rates_with_no_idle_tail_counted() -> None:
    """A session of 20 ms batches beside one of 35 ms, two batches each: the fast one is done
    30 ms before the slow one. Counted as wall time from the first start to the last end,
    those 30 ms read as if the fast one's core idled (4 batches in 70 ms: 57/s); they
    compute 1/0.020 + 1/0.035 = 79 batches/s together. Read from the batches' own times,
    which a loaded machine stretches."""

    def session(batch_s: float) -> Callable[[dict[str, np.ndarray]], None]:
        def run(feeds: dict[str, np.ndarray]) -> None:
            time.sleep(batch_s)  # stands in for ONNX Runtime, which releases the GIL too

        return run

    with ThreadPoolExecutor(2) as pool:
        window = time_concurrent([session(0.020), session(0.035)], {}, 1, 0.001, pool, 2)
    assert window.runs == 4
    fast_s, slow_s = sum(window.latencies_s[:2]), sum(window.latencies_s[2:])
    # The fast session's window comes first; the wall time would read 4 / slow_s.
    assert window.throughput_sps == pytest.approx(2 / fast_s + 2 / slow_s, rel=0.02)
