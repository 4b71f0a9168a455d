"""A server that cannot start says why in one line and exits non-zero, before it loads
anything: a port already taken (a second server on the same machine), a model repository
that is not there, a setting out of range. Each line names the setting that changes it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODELS

pytestmark = pytest.mark.integration

BATCHSERVE = Path(sys.executable).with_name("batchserve")


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def start(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """`batchserve serve` on the shipped models (other ports off or free); its exit code
    and every line it printed."""
    command = [str(BATCHSERVE), "serve", "--model-repository", str(MODELS), "--port", "0",
               "--grpc-port", "0", *args]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip
    return done.returncode, (done.stdout + done.stderr).splitlines()


@pytest.mark.parametrize("flag", ["--port", "--grpc-port", "--metrics-port"])
def test_a_port_already_taken_is_one_line_naming_it_and_its_setting(taken: int, flag: str) -> None:
    code, lines = start(flag, str(taken))
    assert code != 0
    setting = "BATCHSERVE_" + flag.removeprefix("--").replace("-", "_").upper()
    assert len(lines) == 1, lines
    assert f"port {taken} on 127.0.0.1 is already in use" in lines[0]
    assert flag in lines[0] and setting in lines[0]


def test_a_missing_repository_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "models"
    code, lines = start("--model-repository", str(missing))
    assert code != 0
    assert lines == [
        f"batchserve: model repository {missing} does not exist; point --model-repository / "
        "BATCHSERVE_MODEL_REPOSITORY at the directory holding <model>/<version>/model.onnx"
    ]


def test_settings_out_of_range_are_one_line_naming_each(tmp_path: Path) -> None:
    code, lines = start(env={"BATCHSERVE_MAX_CONNECTIONS": "2", "BATCHSERVE_AUTOTUNE": "maybe"})
    assert code != 0
    assert len(lines) == 1, lines
    assert (
        "BATCHSERVE_MAX_CONNECTIONS: Input should be greater than or equal to 8 (got '2')"
        in (lines[0])
    )
    assert "BATCHSERVE_AUTOTUNE:" in lines[0] and "'maybe'" in lines[0]
