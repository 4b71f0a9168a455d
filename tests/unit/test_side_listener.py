"""The side listener's probes against a real event loop in a thread and a real socket: the
loop's heartbeat decides liveness, so wedging the loop fails liveness and unwedging it
restores it; readiness is what the loop last published."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from app.api.side_listener import LoopHeartbeat, SideListener, start_side_listener

STALL_S = 1.0


class RunningLoop:
    """An asyncio loop serving forever in a thread of its own, as the server's main one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, fn: object, *args: object) -> None:
        self.loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]

    def wedge(self) -> threading.Event:
        """Block the loop (a synchronous call gone wrong) until the returned event is set."""
        release = threading.Event()
        self.call(release.wait, 60.0)
        return release

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class Side:
    def __init__(self) -> None:
        self.reason: str | None = "models are still loading"
        self.registry = CollectorRegistry()
        Counter("probe_test_total", "A series to find in /metrics.", registry=self.registry).inc()
        self.heartbeat = LoopHeartbeat(stall_s=STALL_S, not_ready=lambda: self.reason)
        self.loop = RunningLoop()
        self.loop.call(self.heartbeat.start, self.loop.loop)
        self.listener: SideListener = start_side_listener(
            host="127.0.0.1", port=0, registry=self.registry, heartbeat=self.heartbeat
        )
        self.url = f"http://127.0.0.1:{self.listener.port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5.0)

    def until(self, path: str, status: int, *, within_s: float) -> tuple[httpx.Response, float]:
        """Probe every 50 ms until `path` answers `status`; the answer and the time it took."""
        start = time.monotonic()
        while True:
            response = self.get(path)
            waited = time.monotonic() - start
            if response.status_code == status or waited > within_s:
                return response, waited
            threading.Event().wait(0.05)  # the probe period, as a kubelet's


@pytest.fixture
def side() -> Iterator[Side]:
    side = Side()
    try:
        yield side
    finally:
        side.loop.close()  # first: the heartbeat's timer is then cancelled on a stopped loop
        side.listener.close()


def test_liveness_fails_while_the_loop_is_wedged_and_returns_after(side: Side) -> None:
    assert side.get("/v2/health/live").json() == {"live": True}
    release = side.loop.wedge()
    try:
        response, waited = side.until("/v2/health/live", 503, within_s=STALL_S + 3.0)
        assert response.status_code == 503, f"still live {waited:.1f} s into a wedged loop"
        assert "event loop has not run" in response.json()["error"]
        assert "BATCHSERVE_LIVENESS_STALL_S" in response.json()["error"]
        # A wedged loop is not ready either, whatever it last published.
        side.reason = None
        assert side.get("/v2/health/ready").status_code == 503
    finally:
        release.set()
    response, _ = side.until("/v2/health/live", 200, within_s=3.0)
    assert response.json() == {"live": True}


def test_readiness_is_what_the_loop_last_published(side: Side) -> None:
    response, _ = side.until("/v2/health/ready", 503, within_s=3.0)
    assert response.json() == {"error": "models are still loading"}
    side.reason = None
    response, _ = side.until("/v2/health/ready", 200, within_s=3.0)
    assert response.json() == {"ready": True}
    side.reason = "server is shutting down"
    side.loop.call(side.heartbeat.beat_now)
    response, _ = side.until("/v2/health/ready", 503, within_s=3.0)
    assert response.json() == {"error": "server is shutting down"}
    assert side.get("/v2/health/live").status_code == 200  # draining is still alive


def test_metrics_are_served_beside_the_probes(side: Side) -> None:
    response = side.get("/metrics")
    assert response.status_code == 200
    assert "probe_test_total 1.0" in response.text
    assert httpx.head(side.url + "/v2/health/live").status_code == 200
