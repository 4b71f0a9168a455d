"""Many models in bounded memory, against a real server: models load on their first request
(one load however many ask), idle ones are unloaded to make room (those asked least per
byte first), one in use never is, and Triton's client sees the states over HTTP and gRPC.

Each model's cost is measured first by a server without a budget (kept in the tuning cache,
as a user's server keeps it), so the budgets here are set in those measured bytes."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from testing.server_process import ServerProcess
from testing.synthetic_models import write_heavy_model

pytestmark = pytest.mark.integration

WIDTH = 16
CONFIG = """
max_batch_size = 64
[[instances]]
device = "cpu"
count = 1
threads = 1
"""
#: Small ones load in a fraction of a second; "long" computes a batch of 64 for a second or
#: more (its 64 blocks share one weight matrix: its file stays 17 MB).
SMALL = ("m1", "m2", "m3", "keep")
LONG = ("long_a", "long_b")


def write_repository(root: Path) -> None:
    for name in SMALL:
        write_heavy_model(root / name / "1" / "model.onnx", width=WIDTH, hidden=512, blocks=4)
        pinned = "pinned = true\n" if name == "keep" else ""
        (root / name / "config.toml").write_text(pinned + CONFIG)
    for name in LONG:
        write_heavy_model(root / name / "1" / "model.onnx", width=WIDTH, hidden=2048, blocks=64)
        (root / name / "config.toml").write_text(CONFIG)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many")
    write_repository(root)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def costs(repository: Path, cache: Path) -> dict[str, int]:
    """Every model's measured cost, from a server that loads them all at start."""
    server = ServerProcess(repository, env={"BATCHSERVE_CACHE_DIR": str(cache)})
    try:
        rows = httpx.post(f"{server.url}/v2/repository/index").json()
    finally:
        assert server.stop() == 0
    measured = {row["name"]: row["memory_bytes"] for row in rows}
    assert set(measured) == {*SMALL, *LONG} and all(cost > 0 for cost in measured.values())
    return measured


def budgeted(repository: Path, cache: Path, budget: int, **env: str) -> ServerProcess:
    return ServerProcess(
        repository,
        env={
            "BATCHSERVE_CACHE_DIR": str(cache),
            "BATCHSERVE_MODEL_MEMORY": str(budget),
            "BATCHSERVE_MODEL_CONTROL": "true",
            **env,
        },
        grpc=True,
    )


def body(rows: int, seed: int = 0) -> tuple[dict[str, object], np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((rows, WIDTH)).astype(np.float32)
    request = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    return request, x


def expected_output(repository: Path, model: str, x: np.ndarray) -> np.ndarray:
    path = repository / model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def states(server: ServerProcess) -> dict[str, tuple[str, str]]:
    rows = httpx.post(f"{server.url}/v2/repository/index").json()
    return {row["name"]: (row["state"], row["reason"]) for row in rows}


def test_states_loads_and_evictions_as_tritonclient_sees_them(
    repository: Path, cache: Path, costs: dict[str, int]
) -> None:
    # Room for the pinned model and two others: the third evicts m1, asked as often as m2
    # but less recently.
    small = [costs[name] for name in ("m1", "m2", "m3")]
    budget = costs["keep"] + sorted(small)[-1] + sorted(small)[-2] + min(small) // 2
    server = budgeted(repository, cache, budget)
    http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = triton_grpc.InferenceServerClient(server.grpc_target)
    try:
        assert http.is_server_ready() and grpc.is_server_ready()
        index = {row["name"]: row for row in http.get_model_repository_index()}
        assert index["keep"]["state"] == "READY"
        assert index["m1"]["state"] == "UNAVAILABLE"
        assert index["m1"]["reason"] == "not loaded yet; a request to it loads it"
        assert not http.is_model_ready("m1") and not grpc.is_model_ready("m1")

        x = np.ones((2, WIDTH), np.float32)
        for name in ("m1", "m2"):
            inputs = [triton_http.InferInput("x", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x)
            got = http.infer(name, inputs).as_numpy("y")
            np.testing.assert_allclose(got, expected_output(repository, name, x), rtol=1e-5)
        assert http.is_model_ready("m1") and grpc.is_model_ready("m2")

        grpc_inputs = [triton_grpc.InferInput("x", list(x.shape), "FP32")]
        grpc_inputs[0].set_data_from_numpy(x)
        grpc.infer("m3", grpc_inputs)  # needs room: m1 goes
        grpc_index = {row.name: row for row in grpc.get_model_repository_index().models}
        assert grpc_index["m1"].state == "UNAVAILABLE"
        assert (
            grpc_index["m1"].reason
            == "unloaded to fit the memory budget; a request to it loads it again"
        )
        assert {grpc_index[n].state for n in ("m2", "m3", "keep")} == {"READY"}
        assert server.metric("batchserve_model_evictions_total", model="m1") == 1
        assert server.metric("batchserve_model_loads_total", model="m3", reason="request") == 1
        assert server.metric("batchserve_model_memory_budget_bytes") == budget
        assert server.metric("batchserve_model_memory_resident_bytes") <= budget

        # Explicit unload and load behave as Triton's: unloaded stays unloaded until loaded.
        http.unload_model("m2")
        assert states(server)["m2"] == ("UNAVAILABLE", "unloaded")
        refused = httpx.post(f"{server.url}/v2/models/m2/infer", json=body(1)[0])
        assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
        grpc.load_model("m2")
        assert http.is_model_ready("m2")
        assert server.metric("batchserve_model_loads_total", model="m2", reason="explicit") == 1
        assert states(server)["keep"] == ("READY", "")  # pinned: never evicted
    finally:
        http.close()
        grpc.close()
        assert server.stop() == 0


def test_one_load_however_many_requests_wait_for_it(
    repository: Path, cache: Path, costs: dict[str, int]
) -> None:
    server = budgeted(repository, cache, sum(costs.values()) * 2)
    requests = [body(1, seed) for seed in range(50)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/m1/infer", json=request) for request, _ in requests)
            )

    try:
        answers = asyncio.run(send_all())
        assert [a.status_code for a in answers] == [200] * 50
        x = np.concatenate([x for _, x in requests])
        want = expected_output(repository, "m1", x)
        got = np.array([a.json()["outputs"][0]["data"] for a in answers], np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert server.metric("batchserve_model_loads_total", model="m1") == 1
        assert 1 <= server.metric("batchserve_model_load_waits_total", model="m1") <= 50
    finally:
        assert server.stop() == 0


def wait_for(server: ServerProcess, condition: str, check: Callable[[], bool]) -> None:
    """Poll the server until `check()` holds (each poll is a request it answers), for at
    most a minute."""
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{condition} never happened; log:\n{server.log}")


def inflight(client: httpx.Client, model: str) -> float:
    """The model's requests in flight, as /metrics says (over one kept-open connection)."""
    text = client.get("/metrics").text
    found = re.search(
        rf'^batchserve_inflight_requests{{model="{model}",[^}}]*}} (\S+)$', text, re.M
    )
    return float(found[1]) if found else 0.0


@pytest.mark.parametrize("room_wait", ["0", "60"])
def test_a_model_in_use_is_never_evicted(
    repository: Path, cache: Path, costs: dict[str, int], room_wait: str
) -> None:
    """B needs A's room while A computes a batch: with no room wait B is refused at once,
    naming A in use; with one, B's load waits for A's answer, then unloads A."""
    # Room for the pinned small model and one long one, not both: a load is expected to take
    # the model's cost and its file (which it holds parsed while it builds sessions).
    cost = max(costs["long_a"], costs["long_b"])
    file = (repository / "long_a" / "1" / "model.onnx").stat().st_size
    budget = costs["keep"] + cost + file + cost // 2
    server = budgeted(repository, cache, budget, BATCHSERVE_MODEL_ROOM_WAIT_S=room_wait)
    request, x = body(64)
    long_answer: list[tuple[httpx.Response, float]] = []
    try:
        sender = threading.Thread(
            target=lambda: long_answer.append(
                (
                    httpx.post(f"{server.url}/v2/models/long_a/infer", json=request, timeout=120),
                    time.monotonic(),
                )
            )
        )
        sender.start()
        with httpx.Client(base_url=server.url) as client:
            wait_for(server, "long_a computing", lambda: inflight(client, "long_a") >= 1)
        other = httpx.post(f"{server.url}/v2/models/long_b/infer", json=body(1)[0], timeout=60)
        other_done = time.monotonic()
        sender.join()
        answer, long_done = long_answer[0]
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(64, WIDTH)
        np.testing.assert_allclose(
            got, expected_output(repository, "long_a", x), rtol=1e-4, atol=1e-5
        )
        refusals = server.metric("batchserve_model_load_refusals_total", model="long_b")
        if room_wait == "0":
            assert other.status_code == 503, other.text
            assert other.headers["retry-after"] == "1"
            message = other.json()["error"]
            assert "'long_b' needs" in message and "memory budget" in message
            assert "'long_a'" in message and "in use" in message
            assert refusals == 1
            # Now long_a is idle: the retry evicts it.
            other = httpx.post(f"{server.url}/v2/models/long_b/infer", json=body(1)[0], timeout=60)
        else:
            assert refusals == 0 and long_done < other_done  # it waited for long_a's answer
        assert other.status_code == 200, other.text
        assert states(server)["long_a"][1].startswith("unloaded to fit the memory budget")
    finally:
        assert server.stop() == 0


def test_a_model_larger_than_the_budget_says_both_sizes(
    repository: Path, cache: Path, costs: dict[str, int]
) -> None:
    server = budgeted(repository, cache, costs["keep"] + costs["long_a"] // 2)
    try:
        answer = httpx.post(f"{server.url}/v2/models/long_a/infer", json=body(1)[0], timeout=60)
        assert answer.status_code == 503
        message = answer.json()["error"]
        assert "more than the whole memory budget" in message and "MiB" in message
    finally:
        assert server.stop() == 0


def test_sigterm_during_a_cold_load_answers_its_waiters(tmp_path: Path) -> None:
    # A model without [[instances]], tuned at its load with an empty cache: the load takes
    # seconds, long enough to signal while it runs.
    repository = tmp_path / "models"
    write_heavy_model(repository / "tuned" / "1" / "model.onnx", width=WIDTH, hidden=512, blocks=4)
    server = ServerProcess(
        repository,
        env={
            "BATCHSERVE_CACHE_DIR": str(tmp_path / "cache"),
            "BATCHSERVE_MODEL_MEMORY": "1GiB",
            "BATCHSERVE_AUTOTUNE": "on",
            "BATCHSERVE_AUTOTUNE_SECONDS": "3",
        },
    )
    answers: list[httpx.Response] = []
    request, x = body(2)

    def send() -> None:
        answers.append(httpx.post(f"{server.url}/v2/models/tuned/infer", json=request, timeout=120))

    sender = threading.Thread(target=send)
    try:
        sender.start()
        wait_for(server, "the cold load", lambda: states(server)["tuned"][0] == "LOADING")
        server.signal_term()
        sender.join()
        assert server.wait(timeout=60) == 0
    finally:
        server.stop()
    assert answers[0].status_code == 200, answers[0].text
    got = np.array(answers[0].json()["outputs"][0]["data"], np.float32).reshape(2, WIDTH)
    np.testing.assert_allclose(got, expected_output(repository, "tuned", x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("share", [True, False], ids=["shared", "not-shared"])
def test_resident_models_share_the_cores(tmp_path: Path, share: bool) -> None:
    """Twenty resident models, each with one compute thread, under load at once: with the
    cores shared, never more threads computing than cores; with sharing off, the same load
    runs more (the count is real)."""
    names = [f"r{i:02d}" for i in range(20)]
    for name in names:
        write_heavy_model(tmp_path / name / "1" / "model.onnx", width=WIDTH, hidden=1024, blocks=4)
        (tmp_path / name / "config.toml").write_text(CONFIG)
    server = ServerProcess(tmp_path, env={"BATCHSERVE_SHARE_CORES": str(share).lower()})
    request = body(8)[0]

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def sender(name: str) -> None:
                for _ in range(10):
                    answer = await client.post(f"/v2/models/{name}/infer", json=request)
                    assert answer.status_code == 200

            await asyncio.gather(*(sender(name) for name in names * 2))

    try:
        asyncio.run(load())
        cores = server.metric("batchserve_compute_cores")
        peak = server.metric("batchserve_compute_threads_peak")
        assert cores >= 1 and server.metric("batchserve_executions_total") >= len(names)
        if share:
            assert 1 <= peak <= cores, (peak, cores)
        else:
            assert peak > cores, (peak, cores)
    finally:
        assert server.stop() == 0
