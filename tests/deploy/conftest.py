"""The container's start command, run outside Docker (no Docker engine where the tests run).

The command and environment are read from the Dockerfile's `cpu` stage (the default target):
its ENTRYPOINT/CMD, with `batchserve` resolved in this virtual environment (the image's
/opt/venv), and its ENV, except that the server listens on 127.0.0.1, on port 0 (gRPC: on a
free port), and serves this checkout's models/ (the directory the image copies to /models).
The environment is the image's too: `make` installs it with the versions of requirements/
(test_container_locks.py checks).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from testing.server_process import ANNOUNCE, free_port
from tests.conftest import MODELS, ROOT
from tests.deploy import dockerfile
from tests.deploy.podman import TIMINGS

DOCKERFILE = ROOT / "Dockerfile"
IMAGE_VENV = "/opt/venv"
LOCAL = {
    "BATCHSERVE_HOST": "127.0.0.1",
    "BATCHSERVE_PORT": "0",
    "BATCHSERVE_MODEL_REPOSITORY": str(MODELS),
}
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ImageCommand:
    """What the image would run, mapped onto this machine."""

    argv: list[str]
    env: dict[str, str]
    image_env: dict[str, str]  # the Dockerfile's ENV as the image has it (unmapped)


def image_command(stage_name: str = "cpu") -> ImageCommand:
    stage = dockerfile.parse(DOCKERFILE).stage(stage_name)
    image_env = stage.env({"PATH": "/usr/local/bin:/usr/bin:/bin"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSERVE_")}
    for key, value in stage.env({"PATH": os.environ.get("PATH", "")}).items():
        env[key] = value.replace(IMAGE_VENV, sys.prefix)
    env.update(LOCAL)
    env["BATCHSERVE_GRPC_PORT"] = str(free_port())  # gRPC has no "any port"
    env["BATCHSERVE_METRICS_PORT"] = str(free_port())  # as deploy/k8s sets it, for its probes
    argv = stage.command()
    assert argv, "the Dockerfile's cpu stage has no ENTRYPOINT or CMD"
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable is not None, f"{argv[0]} is not on the image's PATH"
    return ImageCommand([executable, *argv[1:]], env, image_env)


class ImageProcess:
    """The image's command as a process, with its log; `url` once it announced itself."""

    def __init__(self, command: ImageCommand) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command.argv,
            env=command.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.url = ""
        self.grpc_target = ""  # host:port of its gRPC service
        self._announced = threading.Event()
        self._logged = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._announced.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError(f"the image's command did not start; its log:\n{self.log}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._logged:
                self.lines.append(line)
                self._logged.notify_all()
            match = ANNOUNCE.search(line)
            if match and not self.url:
                self.url = match[2]
                self.grpc_target = match[3] or ""
                self._announced.set()
        self._announced.set()
        with self._logged:
            self._ended = True
            self._logged.notify_all()

    @property
    def side_url(self) -> str:
        """The --metrics-port listener: /metrics and the probes, from threads of their own."""
        return f"http://127.0.0.1:{self.command.env['BATCHSERVE_METRICS_PORT']}"

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Block until the process has logged `text` (or ended, or `timeout` passed)."""
        with self._logged:
            found = self._logged.wait_for(lambda: text in self.log or self._ended, timeout)
        assert found and text in self.log, f"never logged {text!r}; the log:\n{self.log}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageProcess]:
    """One server started as the image starts it, shared by the tests that only read it."""
    process = ImageProcess(image_command())
    yield process
    process.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The container check's step timings, where it ran (test_container_image.py)."""
    if TIMINGS:
        steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in TIMINGS.items())
        terminalreporter.write_line(
            "container check (podman) on stand-in bases, not the real ones: Debian bookworm's "
            f"Python 3.11.2 for python:3.11-slim, uv's wheel for the uv image: {steps}"
        )
