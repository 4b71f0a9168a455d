"""Model lifecycle through the v2 repository extension, against a real server: reload under
steady load fails no request; unload drains; model control is off unless enabled."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from load_tests.loadgen import LoadGenerator, client_session, prepare_request
from testing.server_process import ServerProcess
from tests.conftest import MODELS

pytestmark = pytest.mark.integration

TOKEN = "manage-me"


def repository(root: Path) -> Path:
    for name in ("digits", "spare"):
        shutil.copytree(MODELS / "digits", root / name, ignore=shutil.ignore_patterns("*.py"))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = repository(tmp_path_factory.mktemp("lifecycle"))
    env = {"BATCHSERVE_MODEL_CONTROL": "true", "BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}
    process = ServerProcess(root, env=env)
    yield process
    process.stop()


def control(server: ServerProcess, name: str, action: str, token: str = TOKEN) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/repository/models/{name}/{action}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def test_reloading_under_steady_load_fails_no_request(server: ServerProcess) -> None:
    async def scenario() -> tuple[object, list[int]]:
        async with client_session(16) as http:
            request = await prepare_request(http, server.url, "digits", rows=2)
            generator = LoadGenerator(server.url, "digits", request)
            load = asyncio.ensure_future(generator.closed_loop(http, 16, seconds=4.0))
            reloads = []
            async with httpx.AsyncClient(timeout=60) as client:
                for _ in range(3):
                    await asyncio.sleep(0.5)  # spreads the reloads over the load window
                    response = await client.post(
                        f"{server.url}/v2/repository/models/digits/load",
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    )
                    reloads.append(response.status_code)
            return await load, reloads

    result, reloads = asyncio.run(scenario())
    assert reloads == [200, 200, 200]
    assert result.ok > 0  # type: ignore[attr-defined]
    assert result.failures == 0, result.summary()  # type: ignore[attr-defined]
    assert "digits" in server.log


def test_unload_then_load_again(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": [0.0] * 64}]}  # fmt: skip
    assert control(server, "spare", "unload").status_code == 200
    refused = httpx.post(f"{server.url}/v2/models/spare/infer", json=body)
    assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
    index = {r["name"]: r for r in httpx.post(f"{server.url}/v2/repository/index").json()}
    assert index["spare"]["state"] == "UNAVAILABLE"
    assert control(server, "spare", "load").status_code == 200
    assert httpx.post(f"{server.url}/v2/models/spare/infer", json=body).status_code == 200


def test_loading_something_not_in_the_repository_is_404(server: ServerProcess) -> None:
    for name in ("nothere", "..%2F..%2Fetc"):
        response = control(server, name, "load")
        assert response.status_code == 404, response.text


def test_load_and_unload_need_the_management_token(server: ServerProcess) -> None:
    assert control(server, "spare", "load", token="wrong").status_code == 403
    no_header = httpx.post(f"{server.url}/v2/repository/models/spare/load")
    assert no_header.status_code == 401
    assert "BATCHSERVE_MANAGEMENT_TOKEN" in no_header.json()["error"]


def test_model_control_is_off_unless_enabled(tmp_path: Path) -> None:
    process = ServerProcess(repository(tmp_path))
    try:
        response = httpx.post(f"{process.url}/v2/repository/models/digits/unload")
        assert response.status_code == 403
        assert "BATCHSERVE_MODEL_CONTROL" in response.json()["error"]
    finally:
        process.stop()


def until(condition: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    """Watch (bounded) for the server to reach a state: polling happens on its own clock."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {within_s} s: {what}")
        time.sleep(0.05)


def test_repository_poll_loads_reloads_and_unloads_what_the_directory_holds(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repository"
    shutil.copytree(MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py"))
    server = ServerProcess(root, extra_args=["--repository-poll-s", "0.1"])
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}

    def index() -> dict[str, dict[str, str]]:
        rows = httpx.post(f"{server.url}/v2/repository/index").json()
        return {row["name"]: row for row in rows}

    def versions(name: str) -> list[str]:
        return list(httpx.get(f"{server.url}/v2/models/{name}").json().get("versions", []))

    def place(source: Path, target: Path) -> None:
        """Copy beside the repository, then move into it: the poll never sees half a copy."""
        staging = tmp_path / "staging"
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("*.py"))
        staging.rename(target)

    try:
        place(MODELS / "digits", root / "spare")  # a new model
        until(lambda: index().get("spare", {}).get("state") == "READY", "spare loaded")
        answer = httpx.post(f"{server.url}/v2/models/spare/infer", json=body)
        assert answer.status_code == 200, answer.text

        place(MODELS / "digits" / "1", root / "digits" / "2")  # a new version
        until(lambda: versions("digits") == ["2"], "digits v2 serving instead of v1")

        (root / "digits" / "config.toml").write_text("max_batch_size = 'many'\n")
        until(lambda: "model digits failed to load" in server.log, "the broken reload noticed")
        assert versions("digits") == ["2"]  # the old versions keep serving
        assert httpx.post(f"{server.url}/v2/models/digits/infer", json=body).status_code == 200

        shutil.rmtree(root / "spare")  # a removed model
        until(lambda: "spare" not in index(), "spare dropped from the index")
        gone = httpx.post(f"{server.url}/v2/models/spare/infer", json=body)
        assert gone.status_code == 404, gone.text
    finally:
        server.stop()
