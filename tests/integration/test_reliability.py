"""Faults, deadlines and hostile sizes against a real server: one bad request fails alone,
a request past its deadline is answered 504 uncomputed, an oversized body is refused 413."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.server_process import ServerProcess
from testing.synthetic_models import write_gather_model
from tests.conftest import MODELS

pytestmark = pytest.mark.integration

BODY_LIMIT = 65536


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("reliability")
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    write_gather_model(root / "gather" / "1" / "model.onnx")
    # Requests arriving within 300 ms share a batch of 4: the bad one rides with good ones.
    (root / "gather" / "config.toml").write_text(
        "max_batch_size = 8\n[batching]\nmax_queue_delay_ms = 300\npreferred_batch_sizes = [4]\n"
    )
    shutil.copytree(root / "digits", root / "held")
    (root / "held" / "config.toml").write_text(
        "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 5000\npreferred_batch_sizes = [64]\n"
    )
    process = ServerProcess(root, env={"BATCHSERVE_MAX_REQUEST_BYTES": str(BODY_LIMIT)})
    yield process
    process.stop()


def ids_body(value: int) -> dict[str, object]:
    return {"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": [value]}]}


def digits_body(**parameters: object) -> dict[str, object]:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    return {"inputs": [tensor], "parameters": parameters}


def test_a_request_that_makes_the_runtime_fail_fails_alone_in_its_batch(
    server: ServerProcess,
) -> None:
    executions_before = server.metric("batchserve_executions_total", model="gather")

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/gather/infer", json=ids_body(v)) for v in (1, 50, 2, 3))
            )

    good_1, bad, good_2, good_3 = asyncio.run(send())
    assert bad.status_code == 500, bad.text
    message = bad.json()["error"]
    assert "indices element out of data bounds, idx=50" in message
    assert "onnxruntime_src" not in message
    for response, row in ((good_1, 1), (good_2, 2), (good_3, 3)):
        assert response.status_code == 200, response.text
        data = response.json()["outputs"][0]["data"]
        assert data == [float(v) for v in range(row * 4, row * 4 + 4)]
    # They rode in one batch, which was then bisected to find the bad request.
    assert server.metric("batchserve_executions_total", model="gather") > executions_before
    assert server.metric("batchserve_requests_total", model="gather", outcome="error") == 1
    after = httpx.post(f"{server.url}/v2/models/gather/infer", json=ids_body(4))
    assert after.status_code == 200  # the worker goes on serving


def test_a_request_past_its_deadline_is_answered_504_without_computing(
    server: ServerProcess,
) -> None:
    inferences_before = server.metric("batchserve_inferences_total", model="held")
    started = time.monotonic()
    response = httpx.post(
        f"{server.url}/v2/models/held/infer", json=digits_body(timeout=100_000), timeout=30
    )  # 100 ms, while the model would hold it for a fuller batch for 5 s
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert "deadline passed" in response.json()["error"]
    assert elapsed < 2.0
    assert server.metric("batchserve_requests_total", model="held", outcome="timeout") == 1
    assert server.metric("batchserve_inferences_total", model="held") == inferences_before


@pytest.mark.parametrize("timeout", [0, -5, 1.5, "soon"])
def test_a_bad_timeout_parameter_is_400(server: ServerProcess, timeout: object) -> None:
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=digits_body(timeout=timeout))
    assert response.status_code == 400
    assert "parameters.timeout" in response.json()["error"]


def test_a_body_over_the_limit_is_413(server: ServerProcess) -> None:
    rows = 400  # ~130 kB of JSON, over the 64 kB limit set for this server
    x = np.zeros((rows, 64), np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": x}]}
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 413
    assert f"limit of {BODY_LIMIT} bytes" in response.json()["error"]
    small = httpx.post(f"{server.url}/v2/models/digits/infer", json=digits_body())
    assert small.status_code == 200


def test_sigterm_serves_everything_received_refuses_the_rest_and_exits_0(
    tmp_path: Path,
) -> None:
    """200 requests wait in the queue (the model holds them for a fuller batch); SIGTERM
    arrives: all 200 get their answers, new work is refused, the process exits 0."""
    shutil.copytree(MODELS / "digits", tmp_path / "digits", ignore=shutil.ignore_patterns("*.py"))
    (tmp_path / "digits" / "config.toml").write_text(
        "max_batch_size = 256\n[batching]\nmax_queue_delay_ms = 20000\n"
        "preferred_batch_sizes = [256]\nmax_queue_size = 1000\n"
    )
    server = ServerProcess(tmp_path, env={"BATCHSERVE_DRAIN_TIMEOUT_S": "20"})
    x = np.load(MODELS / "digits" / "data" / "test_x.npy")[:200]

    async def scenario() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=201)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            sent = [
                asyncio.ensure_future(
                    client.post(
                        "/v2/models/digits/infer",
                        json={
                            "inputs": [
                                {
                                    "name": "input",
                                    "shape": [1, 64],
                                    "datatype": "FP32",
                                    "data": x[i].tolist(),
                                }
                            ]
                        },
                    )
                )
                for i in range(200)
            ]
            for _ in range(500):  # until all 200 wait in the queue
                if server.metric("batchserve_queue_depth", model="digits") == 200:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the 200 requests never all reached the queue")
            # Their tensors, 200 x 64 float32, are what the queue's byte bound counts.
            assert server.metric("batchserve_queue_bytes", model="digits") == 200 * 64 * 4
            signalled = time.monotonic()
            server.signal_term()
            responses = await asyncio.gather(*sent)
            assert time.monotonic() - signalled < 10  # served at once, not after the delay
            try:
                late = await client.get("/v2/health/ready")
                assert late.status_code == 503
            except httpx.TransportError:
                pass  # or no longer accepting connections at all: refused either way
            return responses

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 200
    labels = [r.json()["outputs"][0]["data"][0] for r in responses]
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODELS / "digits" / "1" / "model.onnx"))
    assert labels == session.run(["label"], {"input": x})[0].tolist()
    assert server.wait(timeout=20) == 0, server.log
    assert "draining" in server.log


@pytest.mark.parametrize(
    ("priority", "message"),
    [(5, "priority 5 is out of range"), (-1, "non-negative integer"), ("high", "non-negative")],
)
def test_a_bad_priority_is_400(server: ServerProcess, priority: object, message: str) -> None:
    response = httpx.post(
        f"{server.url}/v2/models/digits/infer", json=digits_body(priority=priority)
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"],
)
def test_a_wrong_content_type_is_415(server: ServerProcess, content_type: str) -> None:
    response = httpx.post(
        f"{server.url}/v2/models/digits/infer",
        content=json.dumps(digits_body()),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Inference-Header-Content-Length": "999999"}, b'{"inputs": []}', 400),
        ({"Inference-Header-Content-Length": "abc"}, b"{}", 400),
        ({}, b"[" * 5000 + b"]" * 5000, 400),  # deeper than any JSON parser should go
        ({}, b"\xff\xfe not json", 400),
    ],
    ids=["header-length-lies", "header-length-not-a-number", "deep-json", "garbage"],
)
def test_hostile_bodies_get_clear_400s(
    server: ServerProcess, headers: dict[str, str], body: bytes, status: int
) -> None:
    response = httpx.post(f"{server.url}/v2/models/digits/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [(10**9, "needs 256000000000 bytes"), (10**12, "more than 2**40 elements")],
)
def test_a_huge_declared_shape_is_refused_without_allocating(
    server: ServerProcess, rows: int, message: str
) -> None:
    parameters = {"binary_data_size": 8}
    tensor = {"name": "input", "shape": [rows, 64], "datatype": "FP32", "parameters": parameters}
    header = json.dumps({"inputs": [tensor]}).encode()
    response = httpx.post(
        f"{server.url}/v2/models/digits/infer",
        content=header + b"\0" * 8,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_client_that_goes_away_has_its_queued_request_dropped(server: ServerProcess) -> None:
    inferences_before = server.metric("batchserve_inferences_total", model="held")
    cancelled_before = server.metric("batchserve_requests_total", model="held", outcome="cancelled")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the model holds it
        httpx.post(f"{server.url}/v2/models/held/infer", json=digits_body(), timeout=0.5)
    for _ in range(100):  # until the server has noticed (bounded)
        cancelled = server.metric("batchserve_requests_total", model="held", outcome="cancelled")
        if cancelled == cancelled_before + 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the disconnect was never noticed")
    assert server.metric("batchserve_queue_depth", model="held") == 0
    assert server.metric("batchserve_inferences_total", model="held") == inferences_before


def test_a_request_whose_body_is_still_arriving_at_sigterm_is_served(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    server = ServerProcess(root)
    x = np.load(MODELS / "digits" / "data" / "test_x.npy")[:1]
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                     "data": x.ravel().tolist()}]}
    ).encode()  # fmt: skip
    host, port = server.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=30) as client:
            head = (
                "POST /v2/models/digits/infer HTTP/1.1\r\nHost: batchserve\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            client.sendall(head.encode() + body[:40])
            for _ in range(200):  # until the server is handling it (bounded)
                if server.metric("batchserve_inflight_requests", model="digits") == 1:
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the request never reached the server")
            server.signal_term()
            for _ in range(200):
                if "draining" in server.log:
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the server never began to drain")
            client.sendall(body[40:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                answer += chunk
        status, _, payload = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), answer
        label = json.loads(payload)["outputs"][0]["data"][0]
        assert label == int(np.load(MODELS / "digits" / "data" / "test_y.npy")[0])
        assert server.wait(timeout=20) == 0, server.log
    finally:
        server.stop()
