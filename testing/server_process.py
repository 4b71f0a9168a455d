"""Run `batchserve serve` as a real process on 127.0.0.1 (integration tests, benchmarks).

The server is started on port 0 and the tests learn its URL from the one line it logs once it
listens and its models have loaded, so no port is guessed and no sleep stands in for start-up.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

ANNOUNCE = re.compile(
    r"batchserve (ready|NOT ready.*) on (http://127\.0\.0\.1:\d+)(?: and grpc://(127\.0\.0\.1:\d+))?"
)
START_TIMEOUT_S = 120.0


class ServerProcess:
    """One `batchserve serve` process and everything it logged."""

    def __init__(
        self,
        repository: Path,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        source: Path | None = None,
        open_files: int | None = None,
        grpc: bool = False,
    ) -> None:
        """`source`: run the batchserve of that checkout (with this interpreter) instead of
        the installed one, to compare two versions of the code. `open_files`: start it with
        this soft open-files limit (the hard one unchanged). `grpc`: serve gRPC too, on a
        free port (`grpc_target`); off otherwise, so servers never contend for 8001."""
        executable = Path(sys.executable).with_name("batchserve")
        env = {**os.environ, **(env or {})}
        # Where batchserve is importable but not installed (a GPU machine's python3 with the
        # project on PYTHONPATH, load_tests/gpu/check.sh), `python -m app` is the same CLI.
        launcher = [str(executable)] if executable.exists() else [sys.executable, "-m", "app"]
        if source is not None:
            launcher = [sys.executable, "-m", "app"]
            env["PYTHONPATH"] = str(source)
        command = [*launcher, "serve", "--model-repository", str(repository), "--port", "0"]
        # By the environment, which a checkout from before gRPC ignores (source=...).
        env["BATCHSERVE_GRPC_PORT"] = str(free_port() if grpc else 0)
        self._process = subprocess.Popen(
            [*command, *(extra_args or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=source,
            preexec_fn=None if open_files is None else functools.partial(_soft_limit, open_files),
        )
        self._lines: list[str] = []
        self._announced = threading.Event()
        self.url = ""
        #: host:port of the gRPC service, as grpc and tritonclient.grpc take it.
        self.grpc_target = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._announced.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError(f"batchserve did not start; its log:\n{self.log}")

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.append(line)
            match = ANNOUNCE.search(line)
            if match and not self.url:
                self.url = match[2]
                self.grpc_target = match[3] or ""
                self._announced.set()
        self._announced.set()  # the process ended: stop waiting

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of one metric's samples on /metrics whose labels include `labels`."""
        text = httpx.get(f"{self.url}/metrics").text
        total = 0.0
        for match in re.finditer(rf"^{name}(?:\{{(.*)\}})? (\S+)$", text, re.MULTILINE):
            if all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
                total += float(match[2])
        return total

    @property
    def pid(self) -> int:
        return self._process.pid

    def signal_term(self) -> None:
        self._process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit code."""
        code = self._process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=5)
        return self._process.returncode


def _soft_limit(open_files: int) -> None:
    """In the child, before exec: its soft open-files limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))


def free_port() -> int:
    """A port free on 127.0.0.1 now (bound and released: another process could take it
    first, which a test would see as a failed start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
