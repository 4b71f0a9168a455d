"""The KServe v2 gRPC service against a real server, spoken to with tritonclient.grpc (sync,
asyncio and streaming) and with Triton's generated stubs, as Triton users do: every v2
datatype the model zoo has, typed and raw contents, metadata, config, statistics, the
repository, deadlines and cancellation that drop queued requests uncomputed, a full queue,
tokens, health, and errors worded as REST's."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from load_tests.server_process import ServerProcess
from load_tests.synthetic_models import _save, write_token_model, write_word_tokenizer
from load_tests.triton_models import write_repository
from tests.conftest import DIGITS_ONNX, MODELS, ROOT

pytestmark = pytest.mark.integration

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon"]
#: A model that holds what it queues: a batch waits a minute for 64 samples, 2 at most queue.
HELD = (
    "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 60000\npreferred_batch_sizes = [64]\n"
    "max_queue_size = 2\n"
)


def write_half_model(path: Path) -> None:
    """y FP16 [batch, 4] = 2 * x FP16 [batch, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])],
    )
    _save(graph, path)


def repository(root: Path) -> Path:
    write_repository(root)  # simple, simple_int8, simple_string, simple_identity
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    write_half_model(root / "half" / "1" / "model.onnx")
    (root / "held" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text(HELD)
    write_token_model(root / "embed" / "1" / "model.onnx")
    write_word_tokenizer(root / "embed" / "tokenizer.json", WORDS)
    (root / "embed" / "config.toml").write_text(
        'max_batch_size = 8\ndefault_outputs = ["pooled"]\n'
        "[padding]\ninputs = { input_ids = 0, attention_mask = 0 }\n"
        '[tokenizer]\ninput = "text"\nmax_length = 16\n'
    )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        repository(tmp_path_factory.mktemp("grpc")), grpc=True,
        env={"BATCHSERVE_MODEL_CONTROL": "true"},
    )  # fmt: skip
    yield process
    assert process.stop() == 0, process.log


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def digits_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": x})
    return {"label": label, "probabilities": probabilities}


def executions(server: ServerProcess, model: str) -> float:
    return server.metric("batchserve_executions_total", model=model)


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


# -- metadata, config, statistics, repository ----------------------------------------------


def test_health_metadata_config_and_statistics(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    assert client.is_server_live(headers={"test": "1"}) and client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "batchserve"
    metadata = client.get_model_metadata("digits")
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in unknown.value.message()
    config = client.get_model_config("digits", as_json=True)["config"]
    rest = httpx.get(f"{server.url}/v2/models/digits/config").json()
    assert config["name"] == rest["name"] == "digits"
    assert config["max_batch_size"] == rest["max_batch_size"] == 64
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        (i["name"], i["data_type"], i["dims"]) for i in rest["input"]
    ]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    client.infer("simple", [tensor("INPUT0", np.zeros((1, 16), np.int32), "INT32"),
                            tensor("INPUT1", np.zeros((1, 16), np.int32), "INT32")])  # fmt: skip
    stats = client.get_inference_statistics("simple").model_stats
    assert len(stats) == 1 and stats[0].inference_count >= 1
    assert stats[0].inference_stats.success.count >= 1


def test_load_and_unload(client: grpcclient.InferenceServerClient) -> None:
    names = {m.name for m in client.get_model_repository_index().models}
    assert {"digits", "simple", "held"} <= names
    client.unload_model("half")
    assert not client.is_model_ready("half")
    client.load_model("half")
    assert client.is_model_ready("half")
    with pytest.raises(InferenceServerException, match="failed to load 'wrong_model_name'"):
        client.load_model("wrong_model_name")


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


def held_inputs() -> list[grpcclient.InferInput]:
    return [tensor("input", np.zeros((1, 64), np.float32), "FP32")]


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


def test_tokens_come_from_the_authorization_metadata(tmp_path: Path) -> None:
    write_repository(tmp_path)
    server = ServerProcess(tmp_path, grpc=True, env={"BATCHSERVE_API_TOKEN": "s3cret"})
    try:
        client = grpcclient.InferenceServerClient(server.grpc_target)
        assert client.is_server_live()  # health stays open
        with pytest.raises(InferenceServerException) as missing:
            client.get_model_metadata("simple")
        assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as wrong:
            client.get_model_metadata("simple", headers={"authorization": "Bearer nope"})
        assert wrong.value.status() == "StatusCode.PERMISSION_DENIED"
        good = client.get_model_metadata("simple", headers={"authorization": "Bearer s3cret"})
        assert good.name == "simple"
        client.close()
    finally:
        server.stop()


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


# -- health and drain ----------------------------------------------------------------------


def health_status(target: str) -> object:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status


def test_sigterm_answers_200_calls_in_flight_and_health_turns_not_serving(
    tmp_path: Path,
) -> None:
    from load_tests.synthetic_models import write_cnn_model

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


LOADGEN_CHECK = """
import asyncio, json, sys
from load_tests.loadgen_grpc import GrpcLoadGenerator, open_channels, prepare_grpc_request

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
