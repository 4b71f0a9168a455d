"""The KServe v2 gRPC service when requests cannot be answered, against a real server through
tritonclient.grpc: a bad input is INVALID_ARGUMENT worded as REST's 400, a client deadline
and a cancelled stream drop queued requests uncomputed, a full queue is UNAVAILABLE, and on
SIGTERM the calls in flight are answered while health turns NOT_SERVING."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from tests.grpc_helpers import client as client  # fixture: a client of this module's server
from tests.grpc_helpers import executions, held_inputs, tensor
from tests.grpc_helpers import server as server  # fixture: a server per test module

pytestmark = pytest.mark.integration


# -- errors, deadlines, cancellation, overload ----------------------------------------------


def test_a_bad_input_is_invalid_argument_worded_as_rest_s_400(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    x = np.zeros((1, 63), np.float32)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("digits", [tensor("input", x, "FP32")])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 63],
                        "data": [0.0] * 63}]}  # fmt: skip
    rest = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert rest.status_code == 400 and refused.value.message() == rest.json()["error"]


def test_a_client_deadline_drops_the_request_uncomputed(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    before = executions(server, "held")
    with pytest.raises(InferenceServerException) as late:
        client.infer("held", held_inputs(), client_timeout=0.3)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert server.metric("batchserve_queue_depth", model="held") == 0
    assert executions(server, "held") == before


def test_a_full_queue_is_unavailable(server: ServerProcess) -> None:
    """Triton answers a full queue UNAVAILABLE ("Exceeds maximum queue size"), the code gRPC
    clients retry."""

    async def scenario() -> None:
        async with aioclient.InferenceServerClient(server.grpc_target) as client:
            queued = [asyncio.create_task(client.infer("held", held_inputs(), client_timeout=30))
                      for _ in range(2)]  # fmt: skip
            for _ in range(500):  # until both are queued (bounded)
                if server.metric("batchserve_queue_depth", model="held") == 2:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(InferenceServerException) as full:
                await client.infer("held", held_inputs())
            assert full.value.status() == "StatusCode.UNAVAILABLE"
            assert "Exceeds maximum queue size" in full.value.message()
            for task in queued:
                task.cancel()
            await asyncio.gather(*queued, return_exceptions=True)

    asyncio.run(scenario())
    for _ in range(500):  # the cancelled calls leave the queue (bounded)
        if server.metric("batchserve_queue_depth", model="held") == 0:
            break
    assert server.metric("batchserve_queue_depth", model="held") == 0


def test_a_cancelled_stream_drops_its_queued_requests(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    before = executions(server, "held")
    answers: list[object] = []
    client.start_stream(callback=lambda result, error: answers.append(result or error))
    for i in range(2):
        client.async_stream_infer("held", held_inputs(), request_id=f"s{i}")
    for _ in range(500):  # until both are queued (bounded)
        if server.metric("batchserve_queue_depth", model="held") == 2:
            break
    assert server.metric("batchserve_queue_depth", model="held") == 2
    client.stop_stream(cancel_requests=True)
    for _ in range(500):
        if server.metric("batchserve_queue_depth", model="held") == 0:
            break
    assert server.metric("batchserve_queue_depth", model="held") == 0
    assert executions(server, "held") == before


# -- health and drain ----------------------------------------------------------------------


def health_status(target: str) -> object:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status


def test_sigterm_answers_200_calls_in_flight_and_health_turns_not_serving(
    tmp_path: Path,
) -> None:
    from testing.synthetic_models import write_cnn_model

    # About 60 samples/s here: 200 calls take seconds to compute.
    write_cnn_model(tmp_path / "cnn" / "1" / "model.onnx", channels=(128, 256, 512), size=56)
    (tmp_path / "cnn" / "config.toml").write_text(
        "max_batch_size = 4\n[batching]\nmax_queue_size = 512\n"
        '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 2\n'
    )
    x = np.random.default_rng(0).random((1, 1, 56, 56), dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "cnn" / "1" / "model.onnx"))
    expected = session.run(None, {"x": x})[0]
    server = ServerProcess(tmp_path, grpc=True)
    assert health_status(server.grpc_target) == health_pb2.HealthCheckResponse.SERVING

    async def scenario() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server.grpc_target) as client:
            calls = [asyncio.create_task(client.infer("cnn", [tensor("x", x, "FP32")]))
                     for _ in range(200)]  # fmt: skip
            for _ in range(2000):  # until all have reached the server, most still queued
                arrived = server.metric("batchserve_inflight_requests", model="cnn")
                arrived += server.metric("batchserve_requests_total", model="cnn")
                if arrived >= 200:
                    break
                await asyncio.sleep(0.005)
            assert server.metric("batchserve_queue_depth", model="cnn") >= 100
            server.signal_term()
            status = await asyncio.to_thread(health_status, server.grpc_target)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(InferenceServerException) as refused:
                await client.infer("cnn", [tensor("x", x, "FP32")])
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            results = await asyncio.gather(*calls)
        return [r.as_numpy(r.get_response().outputs[0].name) for r in results]

    try:
        answers = asyncio.run(scenario())
        assert server.wait(timeout=60) == 0, server.log
    finally:
        server.stop()
    assert len(answers) == 200
    for answer in answers:
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
