"""Access: with BATCHSERVE_API_TOKEN set, models and repository need the bearer token while
probes and scrapers stay open; model names are looked up, never used as paths."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from tests.conftest import MODELS

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("access") / "repository"
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    (root.parent / "secret").mkdir()
    (root.parent / "secret" / "1").mkdir()  # a model-shaped directory outside the repository
    shutil.copy(MODELS / "digits" / "1" / "model.onnx", root.parent / "secret" / "1")
    process = ServerProcess(root, env={"BATCHSERVE_API_TOKEN": TOKEN})
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/digits/infer"),
        ("GET", "/v2/models/digits"),
        ("GET", "/v2/models/digits/stats"),
        ("POST", "/v2/repository/index"),
    ],
)
def test_models_and_repository_need_the_token(
    server: ServerProcess, method: str, path: str
) -> None:
    url = server.url + path
    body = BODY if path.endswith("infer") else None
    missing = httpx.request(method, url, json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "BATCHSERVE_API_TOKEN" in missing.json()["error"]
    wrong = httpx.request(method, url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200, right.text


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2", "/metrics"])
def test_probes_and_scrapers_stay_open(server: ServerProcess, path: str) -> None:
    assert httpx.get(server.url + path).status_code == 200


def test_tritonclient_passes_the_token_as_a_header(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = triton.InferInput("input", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException, match="Bearer"):
        client.infer("digits", [x])
    result = client.infer("digits", [x], headers={"Authorization": f"Bearer {TOKEN}"})
    assert result.as_numpy("label").shape == (1,)


# Plain `..` segments are resolved by HTTP clients before they are sent; the encoded forms
# reach the server as such.
@pytest.mark.parametrize(
    "name", ["%2e%2e", "..%2Fsecret", "%2e%2e%2fsecret", "..%5Csecret", "secret", "digits%00"]
)
def test_model_names_never_reach_outside_the_repository(server: ServerProcess, name: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for response in (
        httpx.get(f"{server.url}/v2/models/{name}", headers=auth),
        httpx.post(f"{server.url}/v2/models/{name}/infer", json=BODY, headers=auth),
    ):
        assert response.status_code == 404, (name, response.status_code, response.text)
    index = httpx.post(f"{server.url}/v2/repository/index", headers=auth).json()
    assert [row["name"] for row in index] == ["digits"]


def write_external_data_model(version_dir: Path, location: str) -> None:
    """y = x + w with `w` kept as external data that the graph says is at `location`."""
    from onnx import TensorProto, helper, numpy_helper, save_model

    version_dir.mkdir(parents=True)
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    save_model(model, version_dir / "model.onnx", save_as_external_data=True,
               location="w.bin", size_threshold=0)  # fmt: skip
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    save_model(model, version_dir / "model.onnx")  # the graph now points at `location`


def test_models_whose_files_lie_outside_their_directory_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    outside = tmp_path / "outside"
    write_external_data_model(outside / "1", "w.bin")  # a good model, but not in the repository
    write_external_data_model(root / "inside" / "1", "w.bin")
    write_external_data_model(root / "dotdot" / "1", "../../../outside/1/w.bin")
    write_external_data_model(root / "absolute" / "1", str(outside / "1" / "w.bin"))
    write_external_data_model(root / "linked_data" / "1", "w.bin")
    (root / "linked_data" / "1" / "w.bin").unlink()
    (root / "linked_data" / "1" / "w.bin").symlink_to(outside / "1" / "w.bin")
    (root / "linked_model" / "1").mkdir(parents=True)
    (root / "linked_model" / "1" / "model.onnx").symlink_to(outside / "1" / "model.onnx")

    server = ServerProcess(root, env={"BATCHSERVE_STRICT_READINESS": "false"})
    try:
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        rows = {row["name"]: row for row in index}
        assert rows["inside"]["state"] == "READY"
        refused = ["absolute", "dotdot", "linked_data", "linked_model"]
        for name in refused:
            assert rows[name]["state"] == "UNAVAILABLE", rows[name]
        for name in ["absolute", "dotdot", "linked_data"]:
            assert "tensor 'w' keeps its data at" in rows[name]["reason"], rows[name]
        assert "outside its version directory" in rows["linked_model"]["reason"]
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
        answer = httpx.post(f"{server.url}/v2/models/inside/infer", json=body)
        assert answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
        for name in refused:
            response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body)
            assert response.status_code == 503, (name, response.text)
    finally:
        server.stop()


def test_cors_is_off_by_default(server: ServerProcess) -> None:
    # No Access-Control-Allow-Origin: a browser page from another origin cannot call the API.
    origin = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    preflight = httpx.options(f"{server.url}/v2/models/digits/infer", headers=origin)
    simple = httpx.get(f"{server.url}/v2/health/live", headers={"Origin": origin["Origin"]})
    for response in (preflight, simple):
        assert "access-control-allow-origin" not in response.headers, response.headers


# Superscript one passes str.isdigit() but not int(); Arabic-Indic one passes both.
@pytest.mark.parametrize("version", ["\u00b9", "\u0661", "1.0", "-1"])
def test_odd_versions_are_404_not_500(server: ServerProcess, version: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for response in (
        httpx.get(f"{server.url}/v2/models/digits/versions/{version}", headers=auth),
        httpx.post(
            f"{server.url}/v2/models/digits/versions/{version}/infer", json=BODY, headers=auth
        ),
    ):
        assert response.status_code == 404, (version, response.status_code, response.text)
