"""JSON bodies parsed in the server's parsing processes (app/api/json_pool.py), against a
real server whose threshold for them is 1 KiB: answers and errors are those of parsing in
the server itself, the processes do not carry the server's imports, and a parsing process
that dies costs the body it held, not the server's ability to parse."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testing.server_process import ServerProcess
from testing.synthetic_models import write_sum_model

pytestmark = pytest.mark.integration

IN_PROCESS = {"BATCHSERVE_DECODE_IN_PROCESS_BYTES": "1024"}
WIDTH = 1000  # 1000 numbers of JSON are well past the 1 KiB threshold


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    write_sum_model(tmp_path / "sum" / "1" / "model.onnx")
    (tmp_path / "sum" / "config.toml").write_text("max_batch_size = 1\n")
    process = ServerProcess(tmp_path, env=IN_PROCESS)
    yield process
    process.stop()


def infer(server: ServerProcess, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/sum/infer", content=body, timeout=30)


def sum_request(values: list[float]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(values)], "data": values}]}
    ).encode()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # it ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def parsers(server: ServerProcess) -> list[int]:
    """The parsing processes: the children of the server's fork server."""
    fork_servers = [
        pid
        for pid in children(server.pid)
        if b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(fork_servers) == 1, fork_servers
    return children(fork_servers[0])


def test_answers_and_errors_are_those_of_parsing_in_the_server(server: ServerProcess) -> None:
    answer = infer(server, sum_request([0.5] * WIDTH))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [500.0]

    bad = sum_request([0.5] * WIDTH).replace(b'"FP32"', b'"FP99"')
    refused = infer(server, bad)
    assert refused.status_code == 400
    assert "FP99" in refused.json()["error"]

    broken = infer(server, sum_request([0.5] * WIDTH)[:-2])
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]
    assert server.metric("batchserve_requests_total", model="sum", outcome="invalid") == 2


def test_parsing_processes_do_not_carry_the_server(server: ServerProcess) -> None:
    """They fork from a fork server that imported the codec alone: no ONNX Runtime, no web
    framework (re-importing the server cost each process most of a second of a core)."""
    assert infer(server, sum_request([1.0] * WIDTH)).status_code == 200
    pids = parsers(server)
    assert len(pids) == 2
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" not in maps, f"parsing process {pid} loaded ONNX Runtime"


def test_a_parsing_process_killed_costs_only_the_body_it_was_given(
    server: ServerProcess,
) -> None:
    assert infer(server, sum_request([1.0] * WIDTH)).status_code == 200
    for pid in parsers(server):
        os.kill(pid, signal.SIGKILL)
    # Each dead parser fails the one body handed to it, and is replaced.
    for _ in range(2):
        failed = infer(server, sum_request([1.0] * WIDTH))
        assert failed.status_code == 500
        assert "parsing this" in failed.json()["error"]
    answer = infer(server, sum_request([2.0] * WIDTH))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2000.0]
    assert len(parsers(server)) == 2
