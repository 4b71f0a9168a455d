"""`batchserve serve` as a real process on 127.0.0.1, spoken to over HTTP as a client would.

One server runs the shipped repository (what `make serve` serves); another runs a repository
made for the tests: the digits model, the same graph with no config.toml, one with a broken
config, one held back by a long queue delay (to fill its queue), and one asking for a GPU.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from testing.server_process import ServerProcess
from tests.conftest import DIGITS_ONNX, MODELS, ROOT

pytestmark = pytest.mark.integration

HELD_DELAY_MS = 3000


def write_model(root: Path, name: str, config: str | None) -> None:
    (root / name / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / name / "1" / "model.onnx")
    if config is not None:
        (root / name / "config.toml").write_text(config)


@pytest.fixture(scope="module")
def shipped() -> Iterator[ServerProcess]:
    server = ServerProcess(MODELS)
    yield server
    assert server.stop() == 0, server.log  # a graceful stop exits 0
    assert "batchserve stopped" in server.log, server.log


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "digits", (MODELS / "digits" / "config.toml").read_text())
    write_model(root, "bare", None)
    write_model(root, "broken", "max_batch_sise = 8\n")
    write_model(
        root,
        "held",
        f"max_batch_size = 64\n[batching]\nmax_queue_delay_ms = {HELD_DELAY_MS}\n"
        "preferred_batch_sizes = [64]\nmax_queue_size = 2\n",
    )
    write_model(root, "gpu", '[[instances]]\ndevice = "cuda:0"\n')
    server = ServerProcess(root)
    yield server
    server.stop()


def infer_body(x: np.ndarray, **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
        **extra,
    }


# -- the shipped repository (make serve) ------------------------------------------------


def test_readme_sample_request_returns_the_digits_prediction(
    shipped: ServerProcess, digits_test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    assert httpx.get(f"{shipped.url}/v2/health/ready").status_code == 200
    body = (MODELS / "digits" / "sample_request.json").read_bytes()
    response = httpx.post(
        f"{shipped.url}/v2/models/digits/infer",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "digits-sample"
    assert result["model_name"] == "digits" and result["model_version"] == "1"
    label = next(o for o in result["outputs"] if o["name"] == "label")
    assert label == {
        "name": "label",
        "datatype": "INT64",
        "shape": [2],
        "data": digits_test_set[1][:2].tolist(),
    }


def test_startup_log_names_url_models_devices_and_providers(shipped: ServerProcess) -> None:
    line = next(line for line in shipped.log.splitlines() if "batchserve ready on" in line)
    assert shipped.url in line
    assert "digits v1 [cpu/0 CPUExecutionProvider]" in line


def test_served_predictions_give_the_models_own_accuracy(
    shipped: ServerProcess, digits_test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits_test_set
    chunks = [x[i : i + 50] for i in range(0, len(x), 50)]

    async def predict() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=shipped.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=infer_body(c)) for c in chunks)
            )

    responses = asyncio.run(predict())
    served = np.concatenate(
        [
            np.array(next(o for o in r.json()["outputs"] if o["name"] == "label")["data"])
            for r in responses
        ]
    )
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])
    own = session.run(["label"], {"input": x})[0]
    np.testing.assert_array_equal(served, own)
    accuracy = float((served == y).mean())
    assert accuracy == pytest.approx(float((own == y).mean()))
    assert accuracy > 0.95


def test_concurrent_requests_against_one_worker_are_batched(
    shipped: ServerProcess, digits_test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits_test_set[0][:64]
    labels = {"model": "digits", "version": "1"}
    executions_before = shipped.metric("batchserve_executions_total", **labels)
    inferences_before = shipped.metric("batchserve_inferences_total", **labels)

    async def send() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=shipped.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post("/v2/models/digits/infer", json=infer_body(x[i : i + 1]))
                    for i in range(64)
                )
            )

    responses = asyncio.run(send())
    assert all(r.status_code == 200 for r in responses)
    session = ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])
    own = session.run(["label"], {"input": x})[0]
    served = [r.json()["outputs"][0]["data"][0] for r in responses]
    assert served == own.tolist()  # each response carries its own row's answer
    executions = shipped.metric("batchserve_executions_total", **labels) - executions_before
    inferences = shipped.metric("batchserve_inferences_total", **labels) - inferences_before
    assert inferences == 64
    assert executions < 64, f"64 requests took {executions} executions: no batching"


# -- errors ---------------------------------------------------------------------------------


def post(server: ServerProcess, model: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=content)


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def one_row() -> np.ndarray:
    return np.zeros((1, 64), np.float32)


def test_unknown_model_or_version_is_404(shipped: ServerProcess) -> None:
    # Triton's wording, which tritonclient's examples check with startswith.
    unknown = post(shipped, "nope", infer_body(one_row()))
    assert_error(unknown, 404, "Request for unknown model: 'nope' is not found")
    assert unknown.json()["error"].startswith("Request for unknown model")
    response = httpx.post(
        f"{shipped.url}/v2/models/digits/versions/7/infer", json=infer_body(one_row())
    )
    assert_error(response, 404, "'digits' version 7 is not found", "[1]")
    assert_error(httpx.get(f"{shipped.url}/v2/models/nope"), 404, "nope")
    assert_error(httpx.get(f"{shipped.url}/not/a/route"), 404)


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (lambda t: t.update(name="pixels"), ["unknown input 'pixels'", "input (FP32 [-1, 64])"]),
        (lambda t: t.update(datatype="FP64"), ["input 'input'", "'FP64'", "FP32"]),
        (lambda t: t.update(shape=[1, 63]), ["input 'input'", "[1, 63]", "[-1, 64]"]),
        (lambda t: t.update(data=t["data"][:-1]), ["input 'input'", "64 values", "63"]),
        (lambda t: t.update(data=["a"] * 64), ["input 'input'", "string", "FP32"]),
    ],
    ids=["name", "datatype", "shape", "data-length", "data-type"],
)
def test_bad_input_is_400_naming_the_input_and_what_was_expected(
    shipped: ServerProcess, mutate: object, fragments: list[str]
) -> None:
    body = infer_body(one_row())
    tensor = body["inputs"][0]  # type: ignore[index]
    tensor["data"] = np.zeros(64).tolist()
    mutate(tensor)  # type: ignore[operator]
    assert_error(post(shipped, "digits", body), 400, *fragments)


def test_malformed_json_is_400(shipped: ServerProcess) -> None:
    assert_error(post(shipped, "digits", b'{"inputs": [}'), 400, "not valid JSON")


def test_a_batch_above_max_batch_size_is_400_naming_the_limit(shipped: ServerProcess) -> None:
    body = infer_body(np.zeros((65, 64), np.float32))
    assert_error(post(shipped, "digits", body), 400, "65 samples", "at most 64", "max_batch_size")


# -- metadata, health, outputs ------------------------------------------------------------


def test_metadata_and_health_speak_v2(shipped: ServerProcess) -> None:
    assert httpx.get(f"{shipped.url}/v2/health/live").status_code == 200
    server = httpx.get(f"{shipped.url}/v2").json()
    assert server["name"] == "batchserve" and "version" in server
    meta = httpx.get(f"{shipped.url}/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    assert meta["parameters"]["instances"][0]["providers"] == ["CPUExecutionProvider"]
    assert httpx.get(f"{shipped.url}/v2/models/digits/versions/1").status_code == 200
    assert httpx.get(f"{shipped.url}/v2/models/digits/ready").status_code == 200
    assert httpx.get(f"{shipped.url}/v2/models/digits/versions/1/ready").status_code == 200
    assert httpx.get(f"{shipped.url}/v2/models/digits/versions/2/ready").status_code == 404


def test_outputs_selection_returns_only_those_asked_for(shipped: ServerProcess) -> None:
    body = infer_body(one_row(), outputs=[{"name": "probabilities"}], id="r-1")
    result = post(shipped, "digits", body).json()
    assert result["id"] == "r-1"
    assert [o["name"] for o in result["outputs"]] == ["probabilities"]
    assert result["outputs"][0]["shape"] == [1, 10]


# -- the mixed repository -------------------------------------------------------------------


def test_a_directory_with_only_a_model_file_serves_with_defaults(mixed: ServerProcess) -> None:
    meta = httpx.get(f"{mixed.url}/v2/models/bare").json()
    assert meta["inputs"][0]["shape"] == [-1, 64]
    assert meta["parameters"]["max_batch_size"] == 32  # batching on: the first axis is dynamic
    response = post(mixed, "bare", infer_body(np.zeros((3, 64), np.float32)))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [3]


def test_a_broken_config_fails_only_that_model_and_says_why(mixed: ServerProcess) -> None:
    index = httpx.post(f"{mixed.url}/v2/repository/index").json()
    states = {row["name"]: row for row in index}
    broken = states["broken"]
    assert broken["state"] == "UNAVAILABLE"
    for fragment in ("broken/config.toml", "max_batch_sise", "max_batch_size", "instances"):
        assert fragment in broken["reason"]
    assert "max_batch_sise" in mixed.log
    assert states["digits"]["state"] == "READY"
    assert post(mixed, "digits", infer_body(one_row())).status_code == 200
    assert_error(post(mixed, "broken", infer_body(one_row())), 503, "broken", "max_batch_sise")
    # Strict readiness (Triton's default): the server is not ready while a model failed.
    assert_error(httpx.get(f"{mixed.url}/v2/health/ready"), 503, "broken")


def test_a_model_asking_for_a_missing_gpu_fails_with_the_providers_found(
    mixed: ServerProcess,
) -> None:
    row = next(
        r for r in httpx.post(f"{mixed.url}/v2/repository/index").json() if r["name"] == "gpu"
    )
    if row["state"] == "READY":  # a machine with a working CUDA provider
        meta = httpx.get(f"{mixed.url}/v2/models/gpu").json()
        assert "CUDAExecutionProvider" in meta["parameters"]["instances"][0]["providers"]
    else:
        assert row["state"] == "UNAVAILABLE"
        assert "cuda:0 asked for CUDAExecutionProvider" in row["reason"]
        assert "got ['CPUExecutionProvider']" in row["reason"]


def test_a_full_queue_is_429_with_retry_after_at_once(mixed: ServerProcess) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=mixed.url, timeout=30) as client:
            held = [
                asyncio.ensure_future(
                    client.post("/v2/models/held/infer", json=infer_body(one_row()))
                )
                for _ in range(2)
            ]
            for _ in range(200):  # until both wait in the queue (the server holds them)
                if mixed.metric("batchserve_queue_depth", model="held") == 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the two requests never reached the queue")
            refused = await client.post("/v2/models/held/infer", json=infer_body(one_row()))
            assert_error(refused, 429, "queue is full")
            assert int(refused.headers["Retry-After"]) >= 1
            assert not any(h.done() for h in held)  # answered while the queue was still full
            served = await asyncio.gather(*held)
            assert [r.status_code for r in served] == [200, 200]

    asyncio.run(scenario())
    assert mixed.metric("batchserve_requests_total", model="held", outcome="rejected") == 1


# -- the load generator (load_tests/) against the real server -------------------------------


def test_load_generator_closed_and_open_loop_check_every_response(shipped: ServerProcess) -> None:
    from load_tests.loadgen import LoadGenerator, client_session, prepare_request, settle

    async def runs() -> list[dict[str, object]]:
        summaries = []
        async with client_session(8) as http:
            for binary in (False, True):
                request = await prepare_request(http, shipped.url, "digits", 4, binary)
                generator = LoadGenerator(shipped.url, "digits", request)
                closed = await generator.closed_loop(http, concurrency=4, seconds=0.3)
                settled = await settle(
                    lambda i, g=generator: g.open_loop(http, rate=100, seconds=0.3, seed=i),
                    max_windows=4,
                    tolerance=10.0,  # any three windows agree: this checks the mechanics
                )
                assert settled.windows == 3
                summaries += [closed.summary(), settled.summary()]
        return summaries

    for summary in asyncio.run(runs()):
        assert summary["requests_ok"] > 0
        assert summary["errors_by_status"] == {} and summary["bad_responses"] == 0
        assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


def test_locust_ramp_and_soak_runs_clean_against_the_server(
    shipped: ServerProcess, tmp_path: Path
) -> None:
    import csv
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOCUST_USERS": "4", "LOCUST_RAMP_S": "1", "LOCUST_SOAK_S": "2"}
    locust = Path(sys.executable).with_name("locust")
    run = subprocess.run(
        [str(locust), "-f", str(ROOT / "load_tests" / "loadgen" / "locustfile.py"), "--headless",
         "-H", shipped.url, "--csv", str(tmp_path / "run"), "--only-summary"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    with (tmp_path / "run_stats.csv").open() as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0


def test_config_answers_what_perf_analyzer_reads_for_every_shipped_model(
    shipped: ServerProcess,
) -> None:
    """Triton's model configuration extension: perf_analyzer reads name, max_batch_size and
    each tensor's name, data type and dims (the batch axis left out when batching), and
    stops if /config fails."""
    assert "model_configuration" in httpx.get(f"{shipped.url}/v2").json()["extensions"]
    names = {row["name"] for row in httpx.post(f"{shipped.url}/v2/repository/index").json()}
    assert "digits" in names
    triton_types = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING"}
    for name in sorted(names):
        metadata = httpx.get(f"{shipped.url}/v2/models/{name}").json()
        for path in (f"/v2/models/{name}/config",
                     f"/v2/models/{name}/versions/{metadata['versions'][-1]}/config"):  # fmt: skip
            response = httpx.get(shipped.url + path)
            assert response.status_code == 200, response.text
            config = response.json()
            assert config["name"] == name
            assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
            batch = config["max_batch_size"]
            assert batch == metadata["parameters"]["max_batch_size"] > 0
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
            assert config["instance_group"][0]["kind"] == "KIND_CPU"
            for kind, key in (("input", "inputs"), ("output", "outputs")):
                expected = [
                    (t["name"], triton_types[t["datatype"]], t["shape"][1:]) for t in metadata[key]
                ]
                got = [(t["name"], t["data_type"], t["dims"]) for t in config[kind]]
                assert got == expected, (name, kind)
    assert_error(httpx.get(f"{shipped.url}/v2/models/nope/config"), 404, "'nope' is not found")
