"""The image itself, built from the Dockerfile and run as docker-compose.yml runs it, with
podman (no Docker engine here): built on stand-in bases (tests/deploy/podman.py: Debian's
Python 3.11.2 for python:3.11.14-slim, uv's wheel for the uv image), not the real ones,
with the CA bundle (and index, where one is set) handed to the build as the Dockerfile's
build secrets, neither of them left in a layer; run with a read-only root, /tmp on tmpfs,
the models bound read-only, a cache volume, as uid 10001, ports on 127.0.0.1: it turns
ready, answers the README's request, serves /metrics, passes its HEALTHCHECK, serves every
queued request on SIGTERM and exits 0, and a second start takes its tuning from the volume.

Skipped, saying why, where podman cannot run, or where neither root (to make the stand-ins)
nor a registry (to pull the real bases) is at hand. About 2.5 minutes on a fresh machine
(making the bases is over one of them; they are kept under build/container-check).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.server_process import free_port
from tests.conftest import MODELS, ROOT
from tests.deploy.podman import (
    HOST_CA_BUNDLE,
    TIMINGS,
    Podman,
    base_images,
    make_python_base,
    make_uv_base,
)

IMAGE = "localhost/batchserve:check"
#: Index variables a user's environment may set; the first one set goes to the build.
INDEX_VARIABLES = ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL")
READY_WITHIN_S = 120.0
#: How long tuning at load may take here (the server's default is 10 s per version).
TUNING_S = "2"
#: Requests held in a queue when SIGTERM comes (a model that waits a minute for a batch).
HELD_REQUESTS = 16


@pytest.fixture(scope="module")
def podman() -> Podman:
    engine = Podman()
    reason = engine.unusable()
    if reason is not None:
        pytest.skip(reason)
    return engine


def timed(step: str, action: Callable[[], object]) -> None:
    started = time.monotonic()
    action()
    TIMINGS[step] = time.monotonic() - started


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The build's secrets: the host's CA bundle, and the index a variable names, if any."""
    given = {}
    if HOST_CA_BUNDLE.is_file():
        given["ca_bundle"] = HOST_CA_BUNDLE
    index = next((os.environ[v] for v in INDEX_VARIABLES if os.environ.get(v)), None)
    if index:
        path = tmp_path_factory.mktemp("secrets") / "index-url"
        path.write_text(index)
        given["index_url"] = path
    return given


@pytest.fixture(scope="module")
def image(podman: Podman, secrets: dict[str, Path]) -> str:
    bases = base_images()
    missing = [name for name in bases.values() if not podman.has_image(name)]
    if missing and os.geteuid() != 0:  # debootstrap needs root: try the real ones instead
        try:
            for name in missing:
                podman("pull", name, timeout=300)
        except RuntimeError as exc:
            pytest.skip(f"no base images: making stand-ins needs root, and pulling failed: {exc}")
    if not podman.has_image(bases["UV_IMAGE"]):
        timed("uv base made", lambda: make_uv_base(podman, bases["UV_IMAGE"]))
    if not podman.has_image(bases["PYTHON_IMAGE"]):
        timed(
            "python base made (debootstrap)",
            lambda: make_python_base(podman, bases["PYTHON_IMAGE"]),
        )
    flags = [f for name, path in secrets.items() for f in ("--secret", f"id={name},src={path}")]
    # --format docker keeps the HEALTHCHECK (the OCI format has no place for it).
    timed("image built", lambda: podman(
        "build", "--pull=never", "--format", "docker", "--network", "host", "--target", "cpu",
        *flags, "--tag", IMAGE, str(ROOT), timeout=900,
    ))  # fmt: skip
    return IMAGE


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits as shipped, "held" (its queue waits a minute for a fuller batch) and "tuned"
    (no [[instances]]: tuned when it loads, its result cached in the volume)."""
    root = tmp_path_factory.mktemp("models")
    config = (MODELS / "digits" / "config.toml").read_text()
    configs = {
        "digits": config,
        "held": "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 60000\n"
        "preferred_batch_sizes = [64]\n",
        "tuned": "max_batch_size = 64\n",
    }
    for name, text in configs.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(MODELS / "digits" / "1" / "model.onnx", root / name / "1" / "model.onnx")
        (root / name / "config.toml").write_text(text)
    shutil.copy(MODELS / "digits" / "sample_request.json", root / "digits")
    root.chmod(0o755)  # read by uid 10001 in the container
    return root


class Container:
    """One container of the image, run as docker-compose.yml runs the server."""

    def __init__(self, podman: Podman, repository: Path, volume: str) -> None:
        self.podman = podman
        self.port, grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.id = podman(
            "run", "--detach", "--read-only", "--tmpfs", "/tmp",
            "--volume", f"{repository}:/models:ro",
            "--volume", f"{volume}:/var/cache/batchserve",
            "--publish", f"127.0.0.1:{self.port}:8000",
            "--publish", f"127.0.0.1:{grpc_port}:8001",
            "--env", "BATCHSERVE_DRAIN_TIMEOUT_S=30",
            "--env", f"BATCHSERVE_AUTOTUNE_SECONDS={TUNING_S}",
            IMAGE,
        ).stdout.strip()  # fmt: skip

    def ready(self) -> float:
        """Seconds until /v2/health/ready answered 200 (bounded)."""
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass  # not listening yet
            assert time.monotonic() - started < READY_WITHIN_S, self.logs()
            time.sleep(0.1)

    def logs(self) -> str:
        done = self.podman("logs", self.id)
        return done.stdout + done.stderr

    def exit_code(self) -> int:
        return int(self.podman("inspect", "--format", "{{.State.ExitCode}}", self.id).stdout)

    def remove(self) -> None:
        self.podman("rm", "--force", self.id)


@pytest.fixture(scope="module")
def volume(podman: Podman) -> Iterator[str]:
    name = f"batchserve-check-{uuid.uuid4().hex[:12]}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "--force", name)


@pytest.fixture(scope="module")
def first(podman: Podman, image: str, repository: Path, volume: str) -> Iterator[Container]:
    container = Container(podman, repository, volume)
    try:
        TIMINGS["first start to ready"] = container.ready()
        yield container
    finally:
        container.remove()


def test_the_build_keeps_neither_the_ca_bundle_nor_the_index(
    podman: Podman, image: str, secrets: dict[str, Path]
) -> None:
    """Secrets were mounted for their RUN steps only: no layer holds a file under
    /run/secrets, a copy of the CA bundle, or the index URL, nor does the image's config."""
    assert "ca_bundle" in secrets, f"no CA bundle at {HOST_CA_BUNDLE} to build with"
    bundle = secrets["ca_bundle"].read_bytes()
    index = secrets["index_url"].read_bytes() if "index_url" in secrets else None
    config = podman("image", "inspect", image).stdout
    assert "ca_bundle" not in config and "index_url" not in config
    assert index is None or index.decode() not in config
    with tempfile.TemporaryDirectory() as saved:
        podman("image", "save", "--format", "oci-dir", "--output", saved, image)
        found = []
        for blob in (Path(saved) / "blobs" / "sha256").iterdir():
            found += leaked_in(blob, bundle, index)
    assert found == []


def leaked_in(blob: Path, bundle: bytes, index: bytes | None) -> list[str]:
    """Members of a layer that are secrets or carry one (blobs that are not layers: none)."""
    digest = hashlib.sha256(bundle).digest()
    leaked: list[str] = []
    if not tarfile.is_tarfile(blob):
        return leaked  # the manifest or the config
    with tarfile.open(blob, mode="r:*") as layer:
        for member in layer:
            if "run/secrets" in member.name:
                leaked.append(member.name)
            if not member.isfile() or member.size > 4 * 2**20:
                continue
            content = layer.extractfile(member)
            data = content.read() if content is not None else b""
            if len(data) == len(bundle) and hashlib.sha256(data).digest() == digest:
                leaked.append(f"{member.name} (the CA bundle)")
            if index is not None and index in data:
                leaked.append(f"{member.name} (the index URL)")
    return leaked


def test_the_image_serves_as_compose_runs_it(podman: Podman, first: Container) -> None:
    assert podman("exec", first.id, "id", "-u").stdout.strip() == "10001"
    body = (MODELS / "digits" / "sample_request.json").read_bytes()
    response = httpx.post(f"{first.url}/v2/models/digits/infer", content=body,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    assert label["data"] == np.load(MODELS / "digits/data/test_y.npy")[:2].tolist()
    metrics = httpx.get(f"{first.url}/metrics").text
    assert 'batchserve_requests_total{model="digits",outcome="success"' in metrics
    started = time.monotonic()
    podman("healthcheck", "run", first.id)  # raises unless healthy
    TIMINGS["healthcheck run"] = time.monotonic() - started
    assert "tuned (cached)" not in first.logs() and "tuned in " in first.logs()


def test_sigterm_serves_every_queued_request_and_exits_0(podman: Podman, first: Container) -> None:
    statuses: list[int] = []
    request = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                           "data": [0.0] * 64}]}  # fmt: skip

    def send() -> None:
        response = httpx.post(f"{first.url}/v2/models/held/infer", json=request, timeout=120)
        statuses.append(response.status_code)

    senders = [threading.Thread(target=send) for _ in range(HELD_REQUESTS)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while queued(first) < HELD_REQUESTS:  # watch (bounded) for all of them to be queued
        assert time.monotonic() < deadline, f"only {queued(first)} queued"
        time.sleep(0.05)
    started = time.monotonic()
    podman("stop", "--time", "45", first.id, timeout=120)  # SIGTERM, then waits
    TIMINGS["SIGTERM to exit"] = time.monotonic() - started
    for sender in senders:
        sender.join(timeout=60)
    assert statuses == [200] * HELD_REQUESTS
    assert first.exit_code() == 0
    assert "every queued request was served" in first.logs()


def queued(container: Container) -> int:
    for line in httpx.get(f"{container.url}/metrics").text.splitlines():
        if line.startswith('batchserve_queue_depth{model="held"'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_a_second_start_takes_the_tuning_from_the_volume(
    podman: Podman, first: Container, repository: Path, volume: str
) -> None:
    second = Container(podman, repository, volume)
    try:
        TIMINGS["second start to ready"] = second.ready()
        assert "tuned (cached)" in second.logs()
        assert json.loads(httpx.get(f"{second.url}/v2/models/tuned").text)["name"] == "tuned"
    finally:
        second.remove()
