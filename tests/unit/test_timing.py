"""app.timing's rotation of sessions (interleaved_latencies_ms): the order in which their
calls are timed, and that each answer is its own session's median."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from app.timing import WARM_UP_RUNS, interleaved_latencies_ms


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
