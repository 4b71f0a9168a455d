"""Ten unload/load, reload and repository-poll cycles of the shipped text model (its three
versions) against a real server, with texts of varied lengths in flight each time the old
versions go: every request is answered (200, or the documented 503 once it is unloaded),
the resident memory after the tenth cycle is within 10% of after the first, and the threads
do not grow with the cycles.

A version's threads are its workers', its tokenizer's and ONNX Runtime's (each of the three
versions has at least two), so a leak adds six or more a cycle. The event loop's shared pool
(asyncio.to_thread) may start a thread of its own when two calls overlap, and keeps it: that
is the slack allowed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from load_tests.studies.reload_cycles import ReloadCycles, copy_model, text_bodies
from testing.server_process import ServerProcess
from tests.conftest import MODELS

MODEL_DIR = MODELS / "minilm"
BUILT = (MODEL_DIR / "1" / "model.onnx").exists()
CYCLES = 10
#: Threads the event loop's shared pool may add over the cycles (never a version's).
SHARED_POOL_SLACK = 2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not BUILT, reason="text model not built: `make text-model` (make test does)"
    ),
]


@pytest.mark.parametrize(
    ("how", "budget"),
    [("unload", None), ("reload", None), ("poll", None), ("unload", "4GiB"), ("poll", "4GiB")],
)
def test_cycles_of_the_text_model_hold_memory_and_threads_and_answer_every_request(
    tmp_path: Path, how: str, budget: str | None
) -> None:
    """Under a memory budget too: there the model loads on the cycles' first request, a
    changed one is reloaded because it is resident, and an explicit load brings it back."""
    repository = tmp_path / "repository"
    repository.mkdir()
    copy_model(MODEL_DIR, repository)
    env = {"BATCHSERVE_MODEL_CONTROL": "true"}
    if budget is not None:
        env["BATCHSERVE_MODEL_MEMORY"] = budget
    poll = ["--repository-poll-s", "0.1"] if how == "poll" else []
    server = ServerProcess(repository, env=env, extra_args=poll)
    try:
        cycles = ReloadCycles(
            server, model="minilm", how=how, bodies=text_bodies(64), repository=repository
        )
        done = asyncio.run(cycles.run(CYCLES))
    finally:
        server.stop()

    for index, cycle in enumerate(done):
        assert cycle.unexpected == [], f"cycle {index + 1}: {cycle.unexpected[:3]}"
        assert cycle.statuses[200] > 0, f"cycle {index + 1}: {cycle.statuses}"
    first, last = done[0], done[-1]
    rss = [round(c.loaded_mib) for c in done]
    assert last.loaded_mib <= 1.10 * first.loaded_mib, f"resident MiB per cycle: {rss}"
    threads = [c.threads for c in done]
    assert last.threads <= first.threads + SHARED_POOL_SLACK, f"threads per cycle: {threads}"
