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

from load_tests.server_process import ServerProcess
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
