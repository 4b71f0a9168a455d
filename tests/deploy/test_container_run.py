"""The image's own start command, run here with the image's environment (no Docker engine):
it resolves to this environment, serves the shipped models, answers its HEALTHCHECK (and
fails it where nothing answers), and drains on SIGTERM."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import MODELS
from tests.deploy import dockerfile
from tests.deploy.conftest import DOCKERFILE, ImageProcess, image_command


def test_image_command_resolves_to_this_environment() -> None:
    command = image_command()
    assert Path(command.argv[0]) == Path(sys.prefix) / "bin" / "batchserve"
    assert command.argv[1:] == ["serve"]
    assert command.image_env["PATH"].startswith("/opt/venv/bin:")


def test_image_command_serves_the_shipped_models(image_server: ImageProcess) -> None:
    assert httpx.get(f"{image_server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{image_server.url}/v2/health/ready").status_code == 200
    body = (MODELS / "digits" / "sample_request.json").read_bytes()
    response = httpx.post(
        f"{image_server.url}/v2/models/digits/infer",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    expected = np.load(MODELS / "digits" / "data" / "test_y.npy")[:2].tolist()
    assert label["data"] == expected
    assert "digits v1" in image_server.log


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run with the image's environment on `port`."""
    command = image_command()
    found = dockerfile.parse(DOCKERFILE).stage("cpu").healthcheck()
    assert found is not None
    options, argv = found
    env = {**command.env, "BATCHSERVE_PORT": str(port)}
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable is not None and Path(executable).parent == Path(sys.prefix) / "bin", (
        "the health check must use the image's own (venv's) Python"
    )
    timeout = float(options.get("timeout", "30s").removesuffix("s"))
    return subprocess.run(
        [executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=timeout + 5
    )


def test_healthcheck_passes_on_a_ready_server(image_server: ImageProcess) -> None:
    result = healthcheck(image_server.port)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_where_nothing_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert healthcheck(closed_port).returncode != 0


def held_repository(root: Path) -> Path:
    """The shipped digits model, configured to hold a lone request in its queue for a fuller
    batch (10 s), so the test knows a request is queued when it sends SIGTERM."""
    shutil.copytree(
        MODELS / "digits", root / "digits", ignore=shutil.ignore_patterns("*.py", "data")
    )
    (root / "digits" / "config.toml").write_text(
        "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 10000\n"
        'preferred_batch_sizes = [64]\n[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 1\n'
    )
    return root


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'^batchserve_queue_depth\{[^}]*model="digits"[^}]*\} (\S+)$', text, re.M)
    return sum(map(float, found))


def test_image_command_drains_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the very process the ENTRYPOINT starts (as PID 1 gets it): the queued
    request is answered at once, without waiting out its batching delay, and the process
    exits 0 within the drain timeout."""
    command = image_command()
    repository = held_repository(tmp_path)
    env = {**command.env, "BATCHSERVE_MODEL_REPOSITORY": str(repository)}
    server = ImageProcess(replace(command, env=env))
    try:
        body = (MODELS / "digits" / "sample_request.json").read_bytes()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{server.url}/v2/models/digits/infer",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            deadline = time.monotonic() + 30
            while queue_depth(server.url) < 1:  # synchronisation: the request is queued
                assert time.monotonic() < deadline and not pending.done(), "never queued"
            signalled = time.monotonic()
            server.process.terminate()  # SIGTERM
            response = pending.result(timeout=60)
        assert response.status_code == 200, response.text
        assert time.monotonic() - signalled < 5, "served at once, not after the 10 s delay"
        label = next(o for o in response.json()["outputs"] if o["name"] == "label")
        assert label["data"] == np.load(MODELS / "digits" / "data" / "test_y.npy")[:2].tolist()
        drain_timeout = float(env.get("BATCHSERVE_DRAIN_TIMEOUT_S", "30"))
        assert server.wait(timeout=drain_timeout) == 0, server.log
        assert "draining" in server.log and "batchserve stopped" in server.log
    finally:
        server.stop()
