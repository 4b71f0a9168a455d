"""Overload against a real server: an open loop offering about 5x what the model can serve,
for 20 s. Every answer must be a correct 200, a 429 or a 504; no request waits in the queue
past its deadline, nor takes the server longer than its deadline plus one batch (both read
from the server's own histograms, which a pause of this test process cannot inflate);
liveness answers within 100 ms throughout; memory stays bounded."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from load_tests.loadgen import LoadGenerator, PreparedRequest, client_session
from testing.server_process import ServerProcess
from testing.synthetic_models import write_cnn_model, write_heavy_model

pytestmark = pytest.mark.integration

DEADLINE_S = 0.5
SECONDS = 20.0


#: The server's latency buckets: a 20 ms grid to 3 s, fine enough to read the slowest batch
#: and the slowest request off the server's own histograms.
GRID_S = 0.02
BUCKETS = (*(round(GRID_S * k, 3) for k in range(1, 151)), 5.0)
#: What the loop may add to a request past its batch: decode, encode, the answer's turn on a
#: loop this test keeps busy (the liveness probe holds the loop to 100 ms).
LOOP_SLACK_S = 0.15


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_five_times_capacity_for_20_s_stays_correct_prompt_and_bounded(tmp_path: Path) -> None:
    # ~60 samples/s here (a 16 ms batch-1 CNN, batches of at most 2): capacity is known small.
    model = tmp_path / "cnn" / "1" / "model.onnx"
    write_cnn_model(model, channels=(128, 256, 512), size=56)
    (tmp_path / "cnn" / "config.toml").write_text(
        "max_batch_size = 2\n[batching]\nmax_queue_size = 16\n"
        '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 2\n'
    )
    server = ServerProcess(tmp_path, env={"BATCHSERVE_LATENCY_BUCKETS": json.dumps(BUCKETS)})
    try:
        x = np.random.default_rng(0).random((1, 1, 56, 56), dtype=np.float32)
        tensor = {"name": "x", "shape": [1, 1, 56, 56], "datatype": "FP32",
                  "data": x.ravel().tolist()}  # fmt: skip
        body = {"inputs": [tensor], "parameters": {"timeout": int(DEADLINE_S * 1e6)}}
        request = PreparedRequest(
            json.dumps(body).encode(), {"Content-Type": "application/json"}, 1, False
        )
        generator = LoadGenerator(server.url, "cnn", request)

        async def measure_capacity() -> float:
            async with client_session(4) as http:
                result = await generator.closed_loop(http, concurrency=4, seconds=2.0)
            return result.throughput

        capacity = asyncio.run(measure_capacity())
        assert capacity > 0
        rss_before = rss_bytes(server.pid)

        probe_latencies: list[float] = []
        stop = threading.Event()

        def probe_liveness() -> None:
            with httpx.Client(base_url=server.url, timeout=5) as client:
                while not stop.is_set():
                    started = time.perf_counter()
                    assert client.get("/v2/health/live").status_code == 200
                    probe_latencies.append(time.perf_counter() - started)
                    stop.wait(0.1)  # the probe period, as a kubelet's

        prober = threading.Thread(target=probe_liveness)
        prober.start()

        async def overload() -> object:
            async with client_session(1000) as http:
                return await generator.open_loop(http, rate=5 * capacity, seconds=SECONDS)

        # The load generator shares this process with every test that ran before it: freeze
        # what they left, so that no full garbage collection of it stalls the client mid-run
        # (and counts as server latency).
        gc.collect()
        gc.freeze()
        try:
            result = asyncio.run(overload())
        finally:
            stop.set()
            prober.join()
            gc.unfreeze()
        rss_growth = rss_bytes(server.pid) - rss_before
        queue_waits = histogram(server, "batchserve_queue_duration_seconds")
        durations = histogram(server, "batchserve_request_duration_seconds")
        computes = histogram(server, "batchserve_compute_duration_seconds")
    finally:
        server.stop()

    statuses = result.statuses  # type: ignore[attr-defined]
    assert set(statuses) <= {200, 429, 504}, statuses
    assert result.bad_responses == 0  # type: ignore[attr-defined]
    assert statuses[429] > 0 and statuses[200] > 0
    assert queue_waits["+Inf"] > 0 and queue_waits[str(DEADLINE_S)] == queue_waits["+Inf"], (
        f"a computed request waited past its deadline in the queue: {queue_waits}"
    )
    # A request may still join a batch as its deadline falls, so the server may answer it
    # that one batch late: the slowest batch of this run (a loaded 2-core machine stretches
    # them several times over) plus the loop's share, and nothing more.
    slowest_batch_s = slowest(computes)
    assert slowest_batch_s <= BUCKETS[-2], f"a batch took past the grid: {nonempty(computes)}"
    bound_s = DEADLINE_S + slowest_batch_s + LOOP_SLACK_S + GRID_S
    assert slowest(durations) <= bound_s, (
        f"a request took the server past its deadline plus the slowest batch "
        f"({slowest_batch_s * 1000:.0f} ms) plus {LOOP_SLACK_S * 1000:.0f} ms: requests "
        f"{nonempty(durations)}, batches {nonempty(computes)}"
    )
    # The client's view, which this process's own pauses inflate: only a hang shows here.
    worst = max(result.latencies_s)  # type: ignore[attr-defined]
    assert worst <= DEADLINE_S + 2.0, f"a request took {worst * 1000:.0f} ms"
    assert len(probe_latencies) > SECONDS * 5
    assert max(probe_latencies) < 0.1, f"liveness took {max(probe_latencies) * 1000:.0f} ms"
    assert rss_growth < 100 * 1024 * 1024, f"RSS grew {rss_growth / 2**20:.0f} MiB"


def slowest(counts: dict[str, float]) -> float:
    """The upper bound of the bucket that holds a histogram's slowest observation."""
    return min(float(le) for le, count in counts.items() if count == counts["+Inf"])


def nonempty(counts: dict[str, float]) -> dict[str, float]:
    """The buckets whose count grew over the one below: where the observations fell."""
    grown, below = {}, 0.0
    for le, count in counts.items():
        if count > below:
            grown[le] = count - below
        below = count
    return grown


def histogram(server: ServerProcess, name: str) -> dict[str, float]:
    """Cumulative bucket counts of one histogram on /metrics, by `le`."""
    text = httpx.get(f"{server.url}/metrics").text
    counts: dict[str, float] = {}
    for match in re.finditer(rf'^{name}_bucket{{.*le="([^"]+)".*}} (\S+)$', text, re.MULTILINE):
        counts[match[1]] = counts.get(match[1], 0.0) + float(match[2])
    return counts


def test_a_stalled_server_computes_no_request_past_its_deadline(tmp_path: Path) -> None:
    """Every request carries a 200 ms deadline; the server is stopped (SIGSTOP) for 3 s under
    load, as a long GC pause or a starved VM would: once it resumes, the requests whose
    deadline passed meanwhile are answered 504, uncomputed, so no computed request has
    waited longer than its deadline in the queue (the timer that should have expired them
    ran late; the batcher checks deadlines again when it forms a batch)."""
    # A model a few ms a batch of 8, so the server, not this process's client, is the
    # bottleneck and requests are queued at any moment (with digits the client was the
    # slower side, and the stall could catch an empty queue); far under the deadline.
    write_heavy_model(tmp_path / "heavy" / "1" / "model.onnx")
    (tmp_path / "heavy" / "config.toml").write_text(
        "max_batch_size = 8\nautotune = false\n[batching]\nmax_queue_delay_ms = 2\n"
        "preferred_batch_sizes = [8]\nmax_queue_size = 4096\n"
    )
    buckets = (0.05, 0.1, 0.2, 0.25, 1.0, 5.0)
    server = ServerProcess(tmp_path, env={"BATCHSERVE_LATENCY_BUCKETS": json.dumps(buckets)})
    try:
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                            "data": [0.5] * 16}], "parameters": {"timeout": 200_000}}  # fmt: skip
        request = PreparedRequest(
            json.dumps(body).encode(), {"Content-Type": "application/json"}, 1, False
        )
        generator = LoadGenerator(server.url, "heavy", request)
        stall = threading.Timer(1.0, stop_for, args=(server.pid, 3.0))

        async def load() -> object:
            async with client_session(64) as http:
                stall.start()
                return await generator.closed_loop(http, concurrency=64, seconds=6.0)

        result = asyncio.run(load())
        stall.join()
        waits = histogram(server, "batchserve_queue_duration_seconds")
        expired = server.metric("batchserve_requests_total", model="heavy", outcome="timeout")
    finally:
        server.stop()
    assert set(result.statuses) <= {200, 504}, result.statuses  # type: ignore[attr-defined]
    assert result.statuses[200] > 0  # type: ignore[attr-defined]
    assert waits["+Inf"] > 0 and waits["0.2"] == waits["+Inf"], (
        f"a computed request waited past its 200 ms deadline in the queue: {waits}"
    )
    assert expired > 0, "no request was queued across the stall: the scenario did not happen"


def stop_for(pid: int, seconds: float) -> None:
    """SIGSTOP `pid` for `seconds` (the stall under test, not a synchronisation)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
