"""What Triton's example HTTP clients (triton-inference-server/client, src/python/examples:
simple_http_infer_client, simple_http_async_infer_client, simple_http_aio_infer_client,
simple_http_string_infer_client, simple_http_health_metadata) call and check, made with
tritonclient against `batchserve serve` on the ONNX builds of their models
(testing/triton_models.py). Written here from what they do; none of their code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from testing.triton_models import write_repository

pytestmark = pytest.mark.integration

QUERY = {"test_1": 1, "test_2": 2}  # the examples add query parameters the server ignores


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("triton-models")
    write_repository(root)
    process = ServerProcess(root)
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), concurrency=2)
    yield client
    client.close()


def add_sub_inputs(
    module: ModuleType, dtype: type[np.generic], datatype: str
) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    """INPUT0 = 0..15 as JSON, INPUT1 = -1s as binary data, as the examples send them."""
    first = np.arange(16, dtype=dtype)[None, :]
    second = np.full((1, 16), -1, dtype=dtype)
    inputs = [module.InferInput("INPUT0", [1, 16], datatype),
              module.InferInput("INPUT1", [1, 16], datatype)]  # fmt: skip
    inputs[0].set_data_from_numpy(first, binary_data=False)
    inputs[1].set_data_from_numpy(second, binary_data=True)
    return inputs, first, second


def requested(module: ModuleType) -> list[httpclient.InferRequestedOutput]:
    """OUTPUT0 as binary data, OUTPUT1 as JSON."""
    return [module.InferRequestedOutput("OUTPUT0", binary_data=True),
            module.InferRequestedOutput("OUTPUT1", binary_data=False)]  # fmt: skip


def check_sum_and_difference(
    result: httpclient.InferResult, first: np.ndarray, second: np.ndarray
) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - second)


@pytest.mark.parametrize(
    ("model", "dtype", "datatype"),
    [("simple", np.int32, "INT32"), ("simple_int8", np.int8, "INT8")],
)
def test_infer_with_and_without_requested_outputs(
    client: httpclient.InferenceServerClient, model: str, dtype: type[np.generic], datatype: str
) -> None:
    inputs, first, second = add_sub_inputs(httpclient, dtype, datatype)
    result = client.infer(model, inputs, outputs=requested(httpclient), query_params=QUERY)
    check_sum_and_difference(result, first, second)
    assert len(client.get_inference_statistics(model_name=model)["model_stats"]) == 1
    result = client.infer(model, inputs, outputs=None, query_params=QUERY)
    check_sum_and_difference(result, first, second)


def test_unknown_model_is_refused_as_triton_words_it(
    client: httpclient.InferenceServerClient,
) -> None:
    inputs, _, _ = add_sub_inputs(httpclient, np.int32, "INT32")
    with pytest.raises(InferenceServerException) as refused:
        client.infer("wrong_model_name", inputs, outputs=requested(httpclient))
    assert refused.value.message().startswith("Request for unknown model")
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in refused.value.message()


def test_async_infer_requests_in_flight_together(
    client: httpclient.InferenceServerClient,
) -> None:
    first = np.arange(16, dtype=np.int32)[None, :]
    second = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"),
              httpclient.InferInput("INPUT1", [1, 16], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(first, binary_data=True)
    inputs[1].set_data_from_numpy(second, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)]  # fmt: skip
    pending = [client.async_infer("simple", inputs, outputs=outputs) for _ in range(2)]
    for request in pending:
        check_sum_and_difference(request.get_result(), first, second)


def test_aio_client_serially_and_in_parallel(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = aioclient.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            inputs, first, second = add_sub_inputs(aioclient, np.int32, "INT32")
            result = await client.infer("simple", inputs, outputs=requested(aioclient),
                                        query_params=QUERY)  # fmt: skip
            check_sum_and_difference(result, first, second)
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics["model_stats"]) == 1
            check_sum_and_difference(await client.infer("simple", inputs), first, second)
            with pytest.raises(InferenceServerException) as refused:
                await client.infer("wrong_model_name", inputs, outputs=requested(aioclient))
            assert refused.value.message().startswith("Request for unknown model")
            both = await asyncio.gather(
                client.infer("simple", inputs, outputs=requested(aioclient), query_params=QUERY),
                client.infer("simple", inputs, query_params=QUERY),
            )
            for result in both:
                check_sum_and_difference(result, first, second)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_strings_holding_numbers_are_added_and_subtracted(
    client: httpclient.InferenceServerClient,
) -> None:
    first = np.arange(16, dtype=np.int32)[None, :]
    second = np.ones((1, 16), dtype=np.int32)

    def as_strings(values: np.ndarray) -> np.ndarray:
        return np.array([str(v).encode() for v in values.ravel()], dtype=np.object_).reshape(1, 16)

    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
              httpclient.InferInput("INPUT1", [1, 16], "BYTES")]  # fmt: skip
    inputs[0].set_data_from_numpy(as_strings(first), binary_data=True)
    inputs[1].set_data_from_numpy(as_strings(second), binary_data=False)
    result = client.infer("simple_string", inputs, outputs=requested(httpclient))
    sums = [int(v) for v in result.as_numpy("OUTPUT0").ravel()]
    differences = [int(v) for v in result.as_numpy("OUTPUT1").ravel()]
    assert sums == (first + second).ravel().tolist()
    assert differences == (first - second).ravel().tolist()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(
    "data",
    [
        np.array([b"he\x00llo"] * 16, dtype=np.object_).reshape(1, 16),
        np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16),
    ],
    ids=["embedded-null", "binary-blob"],
)
def test_identity_returns_strings_unchanged(
    client: httpclient.InferenceServerClient, data: np.ndarray, binary: bool
) -> None:
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    echoed = client.infer("simple_identity", [tensor], outputs=wanted).as_numpy("OUTPUT0")
    if data.dtype == np.object_ and binary:
        np.testing.assert_array_equal(echoed, data)
    elif data.dtype == np.object_:  # JSON strings come back as str
        assert np.array_equal(np.array([str(v).encode() for v in echoed.ravel()],
                                       dtype=np.object_).reshape(1, 16), data)  # fmt: skip
    else:
        np.testing.assert_array_equal(np.char.encode(echoed.astype(str)), data)


def test_health_and_metadata_as_the_example_checks_them(
    client: httpclient.InferenceServerClient,
) -> None:
    assert client.is_server_live(query_params=QUERY)
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata()["name"] == "batchserve"  # the example expects "triton"
    assert client.get_model_metadata("simple", query_params=QUERY)["name"] == "simple"
