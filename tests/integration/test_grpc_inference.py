"""The KServe v2 gRPC service's inference against a real server, spoken to with
tritonclient.grpc (sync, asyncio and streaming) and with Triton's generated stubs, as Triton
users do: every v2 datatype the model zoo has, typed and raw contents, raw text through the
tokenizer, streams answering each request by its id, concurrent requests each getting what
they would alone, and load_tests' gRPC load generator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor

from testing.server_process import ServerProcess
from tests.conftest import ROOT
from tests.grpc_helpers import client as client  # fixture: a client of this module's server
from tests.grpc_helpers import digits_reference, tensor
from tests.grpc_helpers import server as server  # fixture: a server per test module

pytestmark = pytest.mark.integration


# -- the datatypes, typed and raw ----------------------------------------------------------


def test_fp32_in_int64_and_fp32_out_match_onnx_runtime(
    client: grpcclient.InferenceServerClient, digits_test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits_test_set[0][:5]
    result = client.infer("digits", [tensor("input", x, "FP32")], request_id="r-1")
    expected = digits_reference(x)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])
    assert result.get_response().id == "r-1"
    only = client.infer("digits", [tensor("input", x, "FP32")],
                        outputs=[grpcclient.InferRequestedOutput("label")])  # fmt: skip
    assert [o.name for o in only.get_response().outputs] == ["label"]


def test_fp16_int8_and_bytes_through_raw_contents(
    client: grpcclient.InferenceServerClient,
) -> None:
    half = np.array([[0.5, -1.25, 3.0, 65504 / 2]], dtype=np.float16)
    np.testing.assert_array_equal(
        client.infer("half", [tensor("x", half, "FP16")]).as_numpy("y"), half * 2
    )
    first, second = np.arange(16, dtype=np.int8)[None], np.full((1, 16), -1, np.int8)
    result = client.infer("simple_int8", [tensor("INPUT0", first, "INT8"),
                                          tensor("INPUT1", second, "INT8")])  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)
    text = np.array([b"he\x00llo", "ünïcode".encode()] * 8, dtype=np.object_).reshape(1, 16)
    echoed = client.infer("simple_identity", [tensor("INPUT0", text, "BYTES")])
    np.testing.assert_array_equal(echoed.as_numpy("OUTPUT0"), text)


def typed_request(model: str, datatype: str, field: str, values: list[object]) -> object:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        entry = request.inputs.add(name=name, datatype=datatype, shape=[1, 16])
        getattr(entry.contents, field).extend(values)
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT1")
    return request


def test_typed_contents_with_triton_s_stubs(server: ServerProcess) -> None:
    """As Triton's grpc_explicit_*_content_client examples send them: INT32, INT8 and BYTES
    in `contents`, answered in `raw_output_contents`; and Triton's words for the mistakes
    they check."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        values = list(range(16))
        response = stub.ModelInfer(typed_request("simple", "INT32", "int_contents", values))
        sums = np.frombuffer(response.raw_output_contents[0], dtype=np.int32)
        np.testing.assert_array_equal(sums, np.array(values) * 2)
        response = stub.ModelInfer(typed_request("simple_int8", "INT8", "int_contents", values))
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[1], dtype=np.int8), np.zeros(16)
        )
        strings = [str(v).encode() for v in values]
        response = stub.ModelInfer(typed_request("simple_string", "BYTES", "bytes_contents",
                                                 strings))  # fmt: skip
        assert [int(v) for v in deserialize_bytes_tensor(response.raw_output_contents[0])] == [
            2 * v for v in values
        ]

        both = typed_request("simple", "INT32", "int_contents", values)
        both.raw_input_contents.extend([np.arange(8, dtype=np.int32).tobytes()])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(both)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("contents field must not be specified when using raw_input_contents for "
                "'INPUT0' for model 'simple'") in refused.value.details()  # fmt: skip
        wrong_version = typed_request("simple_int8", "INT8", "int_contents", values)
        wrong_version.model_version = "wrong_specification"
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(wrong_version)
        assert ("failed to get model version from specified version string "
                "'wrong_specification'") in refused.value.details()  # fmt: skip
        out_of_range = typed_request("simple_int8", "INT8", "int_contents", [300] * 16)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(out_of_range)
        assert "values out of range for INT8" in refused.value.details()


def test_raw_text_goes_through_the_tokenizer(client: grpcclient.InferenceServerClient) -> None:
    texts = np.array([b"alpha beta", b"gamma delta epsilon alpha"], dtype=np.object_)
    result = client.infer("embed", [tensor("text", texts, "BYTES")])
    assert [o.name for o in result.get_response().outputs] == ["pooled"]  # default_outputs
    alone = [client.infer("embed", [tensor("text", texts[i : i + 1], "BYTES")]) for i in (0, 1)]
    np.testing.assert_allclose(
        result.as_numpy("pooled"), np.concatenate([r.as_numpy("pooled") for r in alone]),
        rtol=0, atol=1e-6,
    )  # fmt: skip
    # As a Triton config declares them (dims [1] reshaped to []): a column of strings.
    column = client.infer("embed", [tensor("text", texts.reshape(2, 1), "BYTES")])
    np.testing.assert_array_equal(column.as_numpy("pooled"), result.as_numpy("pooled"))


# -- streams -------------------------------------------------------------------------------


def test_a_stream_answers_each_request_with_its_id_and_errors_in_place(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: list[tuple[object, object]] = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    x = np.arange(16, dtype=np.int32)[None]
    for i in range(5):
        pair = [tensor("INPUT0", x + i, "INT32"), tensor("INPUT1", x, "INT32")]
        client.async_stream_infer("simple", pair, request_id=f"{i}")
    client.async_stream_infer("simple", [tensor("INPUT0", x, "INT32")], request_id="bad")
    client.stop_stream()  # waits for every answer
    results = {r.get_response().id: r for r, e in answers if r is not None}
    errors = [e for r, e in answers if e is not None]
    assert sorted(results) == [str(i) for i in range(5)]
    for i, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (x + int(i)) + x)
    assert len(errors) == 1 and "missing input(s) ['INPUT1']" in str(errors[0])


# -- the property that guards the batcher, over gRPC --------------------------------------


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 300)), min_size=2,
                         max_size=16))  # fmt: skip
def test_concurrent_requests_each_get_what_they_would_alone(
    server: ServerProcess,
    digits_test_set: tuple[np.ndarray, np.ndarray],
    requests: list[tuple[int, int]],
) -> None:
    pool = digits_test_set[0]

    async def send() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server.grpc_target) as client:
            results = await asyncio.gather(*(
                client.infer("digits", [tensor("input", pool[s : s + n], "FP32")])
                for n, s in requests
            ))  # fmt: skip
        return [r.as_numpy("probabilities") for r in results]

    for (n, start), got in zip(requests, asyncio.run(send()), strict=True):
        expected = digits_reference(pool[start : start + n])["probabilities"]
        np.testing.assert_array_equal(got, expected)


# -- the load generator's gRPC mode --------------------------------------------------------

LOADGEN_CHECK = """
import asyncio, json, sys
from load_tests.loadgen.grpc_client import GrpcLoadGenerator, open_channels, prepare_grpc_request

async def main(target):
    channels = open_channels(target, 2)
    request = await prepare_grpc_request(channels[0], "digits", rows=3)
    loaded = await GrpcLoadGenerator(request, rows=3).closed_loop(channels, 4, 0.5)
    # Told to expect 2 rows, it must find every answer wrong.
    wrong = await GrpcLoadGenerator(request, rows=2).closed_loop(channels, 2, 0.2)
    for channel in channels:
        await channel.close()
    counts = [loaded.statuses[200], wrong.statuses[200]]
    print(json.dumps([loaded.summary(), wrong.summary(), *counts]))

asyncio.run(main(sys.argv[1]))
"""


def test_the_load_generator_s_grpc_mode_counts_and_checks_answers(server: ServerProcess) -> None:
    """load_tests' gRPC mode (make bench), in a process of its own: its stubs and
    tritonclient's define the same protobuf messages, which one process cannot hold."""
    before = server.metric("batchserve_requests_total", model="digits", protocol="grpc")
    ran = subprocess.run([sys.executable, "-c", LOADGEN_CHECK, server.grpc_target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    loaded, wrong, loaded_ok, wrong_ok = json.loads(ran.stdout)
    assert loaded["requests_ok"] > 0 and not loaded["errors_by_status"]
    assert loaded["bad_responses"] == 0
    assert wrong["requests_ok"] == 0 and wrong["bad_responses"] == wrong_ok > 0
    after = server.metric("batchserve_requests_total", model="digits", protocol="grpc")
    assert after - before == loaded_ok + wrong_ok
