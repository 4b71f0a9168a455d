"""What Triton's example gRPC clients (triton-inference-server/client, src/python/examples:
simple_grpc_{infer,async_infer,aio_infer,string_infer}_client, simple_grpc_health_metadata,
simple_grpc_custom_args_client, simple_grpc_keepalive_client; the grpc_explicit_*_content
clients are in test_grpc_inference.py) call and check, made with tritonclient.grpc against
`batchserve serve` on the ONNX builds of their models. Written here from what they do; none
of their code."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from testing.triton_models import write_repository

pytestmark = pytest.mark.integration

FIRST = np.arange(16, dtype=np.int32)[None, :]
SECOND = np.ones((1, 16), dtype=np.int32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("triton-grpc-models")
    write_repository(root)
    process = ServerProcess(root, grpc=True)
    yield process
    process.stop()


def inputs(module: ModuleType) -> list[grpcclient.InferInput]:
    pair = [module.InferInput("INPUT0", [1, 16], "INT32"),
            module.InferInput("INPUT1", [1, 16], "INT32")]  # fmt: skip
    pair[0].set_data_from_numpy(FIRST)
    pair[1].set_data_from_numpy(SECOND)
    return pair


def outputs(module: ModuleType) -> list[grpcclient.InferRequestedOutput]:
    return [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]


def check(result: grpcclient.InferResult) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), FIRST + SECOND)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), FIRST - SECOND)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"channel_args": [("grpc.max_send_message_length", 1024 * 1024),
                          ("grpc.max_receive_message_length", 1024 * 1024),
                          ("grpc.keepalive_time_ms", 2**31 - 1),
                          ("grpc.keepalive_timeout_ms", 20000),
                          ("grpc.keepalive_permit_without_calls", False),
                          ("grpc.http2.max_pings_without_data", 2),
                          ("grpc.dns_enable_srv_queries", 1)]},
        {"keepalive_options": grpcclient.KeepAliveOptions(
            keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000,
            keepalive_permit_without_calls=False, http2_max_pings_without_data=2)},
    ],
    ids=["infer", "custom-args", "keepalive"],
)  # fmt: skip
def test_infer_with_and_without_outputs(server: ServerProcess, options: dict[str, object]) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target, **options)
    try:
        check(client.infer("simple", inputs(grpcclient), outputs=outputs(grpcclient),
                           client_timeout=10, headers={"test": "1"}))  # fmt: skip
        assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
        check(client.infer("simple", inputs(grpcclient), outputs=None))
        check(client.infer("simple", inputs(grpcclient), compression_algorithm="gzip"))
    finally:
        client.close()


def test_async_infer_with_callbacks(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    answers: queue.Queue[object] = queue.Queue()
    for _ in range(2):
        client.async_infer("simple", inputs(grpcclient), outputs=outputs(grpcclient),
                           callback=lambda result, error: answers.put(result or error))  # fmt: skip
    for _ in range(2):
        answer = answers.get(timeout=10)
        assert isinstance(answer, grpcclient.InferResult), answer
        check(answer)
    client.close()


def test_aio_client_serially_and_in_parallel(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with aioclient.InferenceServerClient(server.grpc_target) as client:
            check(await client.infer("simple", inputs(aioclient), outputs=outputs(aioclient),
                                     headers={"test": "1"}))  # fmt: skip
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics.model_stats) == 1
            for result in await asyncio.gather(
                client.infer("simple", inputs(aioclient)),
                client.infer("simple", inputs(aioclient)),
            ):
                check(result)

    asyncio.run(scenario())


def test_strings_and_identity(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    strings = [grpcclient.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
    strings[0].set_data_from_numpy(
        np.array([str(v).encode() for v in FIRST.ravel()], dtype=np.object_).reshape(1, 16)
    )
    strings[1].set_data_from_numpy(np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16))
    result = client.infer("simple_string", strings, outputs=outputs(grpcclient))
    assert [int(v) for v in result.as_numpy("OUTPUT0").ravel()] == (FIRST + 1).ravel().tolist()
    assert [int(v) for v in result.as_numpy("OUTPUT1").ravel()] == (FIRST - 1).ravel().tolist()
    for data in (np.array([b"he\x00llo"] * 16, dtype=np.object_).reshape(1, 16),
                 np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)):  # fmt: skip
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        echoed = client.infer("simple_identity", [tensor]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(echoed.astype(np.bytes_), data.astype(np.bytes_))
    client.close()


def test_health_metadata_and_config(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    assert client.is_server_live(headers={"test": "1", "dummy": "2"})
    assert client.is_server_ready() and client.is_model_ready("simple")
    assert client.get_server_metadata().name == "batchserve"  # the example expects "triton"
    assert client.get_model_metadata("simple", headers={"test": "1"}).name == "simple"
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in unknown.value.message()
    assert client.get_model_config("simple").config.name == "simple"
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("wrong_model_name", inputs(grpcclient))
    assert unknown.value.message().startswith("Request for unknown model")
    client.close()
