"""Worker utilization as /metrics reports it: a saturated worker reads near 1 and an idle one
near 0, measured on the heavy model alone, on a server of its own, with nothing else
competing for the cores (no Prometheus, no other server: this is the module's one test)."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testing.server_process import ServerProcess
from testing.synthetic_models import write_heavy_model
from tests.observability_helpers import heavy_body
from tests.observability_helpers import repository as repository  # fixture

pytestmark = pytest.mark.integration


# -- utilization ------------------------------------------------------------------------


def busy_seconds(server: ServerProcess, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(m[1])
        for m in re.finditer(
            rf'^batchserve_worker_busy_seconds_total\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$',
            text,
            re.MULTILINE,
        )
    )


@pytest.fixture
def heavy_server(repository: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """The heavy model alone, on a server of its own, before Prometheus starts (this test
    must come first in the module), so nothing else competes for the two cores. Four times
    as deep as the module's: each batch computes ~30 ms, so the hand-offs between batches
    (a fraction of a millisecond, more while the client shares the cores) stay a few percent
    of the window."""
    shutil.copytree(repository / "heavy", tmp_path / "heavy")
    write_heavy_model(tmp_path / "heavy" / "1" / "model.onnx", blocks=64)
    process = ServerProcess(tmp_path)
    yield process
    process.stop()


def test_a_saturated_worker_reads_near_1_and_an_idle_one_near_0(
    heavy_server: ServerProcess,
) -> None:
    server = heavy_server

    async def saturate(seconds: float) -> tuple[float, float]:
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def client_loop() -> None:
                while time.monotonic() < stop:
                    r = await client.post("/v2/models/heavy/infer", json=heavy_body(8))
                    assert r.status_code in (200, 429)

            # Three clients: one request computing, two queued (the queue's limit), so the
            # single worker never waits; the window starts once the first batch has run.
            await client.post("/v2/models/heavy/infer", json=heavy_body(8))
            busy_before, started = busy_seconds(server, "heavy"), time.monotonic()
            await asyncio.gather(*(client_loop() for _ in range(3)))
            return busy_seconds(server, "heavy") - busy_before, time.monotonic() - started

    busy, wall = asyncio.run(saturate(3.0))
    assert busy / wall > 0.9, f"saturated worker busy {busy:.2f}s of {wall:.2f}s"

    idle_before, started = busy_seconds(server, "heavy"), time.monotonic()
    time.sleep(1.0)  # the measurement window of an idle worker, not a synchronisation
    idle = (busy_seconds(server, "heavy") - idle_before) / (time.monotonic() - started)
    assert idle < 0.05
