"""Liveness probed as a kubelet probes it, from another process (so that this test process's
own pauses do not count): GET /v2/health/live every 20 ms while a block runs."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator

#: The probe: every 20 ms until its stdin closes; prints the latencies as JSON.
PROBE = """
import json, sys, threading, time, httpx
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies = []
with httpx.Client(base_url=sys.argv[1], timeout=10) as client:
    while not stop.is_set():
        started = time.perf_counter()
        assert client.get("/v2/health/live").status_code == 200
        latencies.append(time.perf_counter() - started)
        stop.wait(0.02)
print(json.dumps(latencies))
"""


@contextlib.contextmanager
def probing(url: str) -> Iterator[list[float]]:
    """Probe `url`'s liveness while the block runs; the list fills with the latencies
    (seconds) once it ends."""
    latencies: list[float] = []
    probe = subprocess.Popen([sys.executable, "-c", PROBE, url], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield latencies
        latencies.extend(json.loads(probe.communicate(timeout=30)[0]))
    finally:
        probe.kill()
