"""The container images, checked without a Docker engine: the Dockerfile passes hadolint and
keeps its promises (two targets, pinned bases, non-root, exec-form start, health check, no
build tools in the final images), the build context holds what it copies, the locks pin the
whole runtime, and the image's own start command, run here with the image's environment,
serves the shipped models, answers its HEALTHCHECK and drains on SIGTERM."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import MODELS, ROOT
from tests.deploy import dockerfile
from tests.deploy.conftest import DOCKERFILE, ImageProcess, image_command

HADOLINT = Path(sys.executable).with_name("hadolint")
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The locks' target, whatever machine runs the tests: Linux x86-64, CPython 3.11.
LOCK_PLATFORM = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": "3.11",
    "python_full_version": "3.11.14",
}
GPU_ORT, CPU_ORT = "onnxruntime-gpu", "onnxruntime"


@pytest.fixture(scope="module")
def parsed() -> dockerfile.Dockerfile:
    return dockerfile.parse(DOCKERFILE)


# -- hadolint --------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_ignores_only_a_documented_few() -> None:
    text = HADOLINT_CONFIG.read_text()
    config = yaml.safe_load(text)
    ignored = config.get("ignored") or []
    assert len(ignored) <= 3, f"too many hadolint rules ignored: {ignored}"
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for rule in ignored:
        assert rule in comments, f"{rule} is ignored without a comment saying why"
    assert config.get("failure-threshold", "info") in ("style", "info")


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs with this config: a Dockerfile breaking its rules fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nENTRYPOINT batchserve serve\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3025"):
        assert rule in result.stdout, result.stdout


# -- what the Dockerfile promises ------------------------------------------------------------

RUNTIME = ("ENV", "USER", "ENTRYPOINT", "CMD", "HEALTHCHECK", "EXPOSE", "WORKDIR")


def test_two_targets_with_cpu_the_default(parsed: dockerfile.Dockerfile) -> None:
    names = [s.name for s in parsed.stages]
    assert "gpu" in names and "cpu" in names
    assert names[-1] == "cpu", "`docker build` without --target builds the last stage"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", parsed.stage("cpu").base)
    assert re.fullmatch(
        r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", parsed.stage("gpu").base
    )


def test_base_images_are_pinned_to_exact_versions(parsed: dockerfile.Dockerfile) -> None:
    stage_names = {s.name for s in parsed.stages}
    for stage in parsed.stages:
        if stage.base in stage_names:
            continue
        tag = stage.base.partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+.*", tag), f"{stage.base}: pin an exact version"
    python_tag = parsed.stage("cpu").base.split(":")[1]
    assert python_tag.startswith(parsed.global_args["PYTHON_VERSION"] + "-"), (
        "PYTHON_VERSION (the gpu image's CPython) must equal the cpu image's Python"
    )


def test_cuda_base_matches_the_locked_onnxruntime_gpu(parsed: dockerfile.Dockerfile) -> None:
    """onnxruntime-gpu links one CUDA major (its `cuda` extra names it); the base must ship it."""
    locked = read_lock("gpu.txt")[GPU_ORT][0]
    assert importlib.metadata.version(GPU_ORT) == locked, "run make: the venv predates the lock"
    requires = importlib.metadata.requires(GPU_ORT) or []
    cuda = next(r for r in map(Requirement, requires) if r.name.startswith("nvidia-cuda-runtime"))
    cudnn = next(r for r in map(Requirement, requires) if r.name.startswith("nvidia-cudnn"))
    cuda_major = Version(next(iter(cuda.specifier)).version).major
    cudnn_major = Version(next(iter(cudnn.specifier)).version).major
    base = parsed.stage("gpu").base
    assert base.startswith(f"nvidia/cuda:{cuda_major}."), (
        f"{base}: onnxruntime-gpu needs CUDA {cuda_major}"
    )
    # nvidia/cuda tags name cuDNN 9 plain `cudnn` (older ones `cudnn8`).
    assert cudnn_major == 9 and "-cudnn-" in base, (
        f"{base}: onnxruntime-gpu needs cuDNN {cudnn_major}"
    )


def test_both_images_start_alike(parsed: dockerfile.Dockerfile) -> None:
    def runtime(stage: dockerfile.Stage) -> list[tuple[str, str]]:
        return [(i.keyword, i.args) for i in stage.instructions if i.keyword in RUNTIME]

    assert runtime(parsed.stage("gpu")) == runtime(parsed.stage("cpu"))


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runs_as_non_root_with_an_exec_form_entrypoint(
    parsed: dockerfile.Dockerfile, target: str
) -> None:
    stage = parsed.stage(target)
    user = stage.last("USER")
    assert user is not None and user.args.split(":")[0] not in ("0", "root")
    assert re.fullmatch(r"\d+(:\d+)?", user.args), "a numeric USER lets runAsNonRoot verify it"
    entrypoint = stage.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["batchserve", "serve"]
    env = stage.env({"PATH": "/usr/bin"})
    assert env["BATCHSERVE_HOST"] == "0.0.0.0", "127.0.0.1 would be unreachable from outside"
    assert env["BATCHSERVE_MODEL_REPOSITORY"] == "/models"
    assert ["models", "/models"] in [c.args.split() for c in stage.all("COPY")]
    exposed = stage.last("EXPOSE")
    assert exposed is not None
    assert exposed.args.split() == [env["BATCHSERVE_PORT"], env["BATCHSERVE_GRPC_PORT"]]
    healthcheck = stage.healthcheck()
    assert healthcheck is not None
    assert "/v2/health/ready" in " ".join(healthcheck[1])


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_final_images_carry_no_build_tools_or_caches(
    parsed: dockerfile.Dockerfile, target: str
) -> None:
    stage = parsed.stage(target)
    for run in stage.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|pip|uv|gcc|make)\b", run.args), run
    for copy in stage.all("COPY"):
        source_stage = re.match(r"--from=(\S+)", copy.args)
        if source_stage:
            assert source_stage[1] == f"{target}-build", copy
            assert copy.args.split()[1] in ("/opt/venv", "/opt/python"), copy
        else:
            assert copy.args.split()[0] == "models", f"only models/ comes from the context: {copy}"
    build = parsed.stage(f"{target}-build")
    build_env = build.env({})
    assert build_env.get("UV_NO_CACHE") == "1", "the build stage must not keep uv's cache"
    installs = [r.args for r in build.all("RUN") if "pip install" in r.args]
    lock = f"requirements/{target}.txt"
    assert any(f"-r {lock}" in i and "--require-hashes" in i and "--no-deps" in i for i in installs)
    assert any(i.rstrip().endswith(".") or " . " in i for i in installs), "the app itself"
    assert all("--no-deps" in i for i in installs), "only the lock may bring dependencies"


# -- the build context -----------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per .dockerignore line, as Docker's pattern matcher reads them."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((not negated, re.compile(regex)))
    return patterns


def in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = excludes
    return not excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_private(
    parsed: dockerfile.Dockerfile,
) -> None:
    patterns = dockerignore_patterns()
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sources = {
        source
        for stage in parsed.stages
        for copy in stage.all("COPY")
        if not copy.args.startswith("--from")
        for source in copy.args.split()[:-1]
    }
    for source in sources:
        needed = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert needed, f"COPY {source}: nothing tracked there"
        assert any(in_context(f, patterns) for f in needed), f"COPY {source}: excluded"
    assert in_context("app/cli.py", patterns) and in_context("models/digits/1/model.onnx", patterns)
    for private in (
        ".git/config",
        ".venv/bin/python",
        ".env",
        "tests/conftest.py",
        "load_tests/report/REPORT.md",
        "deploy/k8s/base/deployment.yaml",
        "app/__pycache__/cli.cpython-311.pyc",
        "models/digits/build_digits.py",
        "models/digits/data/test_x.npy",
    ):
        assert not in_context(private, patterns), f"{private} would be sent to the builder"


# -- the locks -------------------------------------------------------------------------------


def read_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, hashes)} of a requirements lock (entries span `\\` lines)."""
    text = (REQUIREMENTS / name).read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement_text, *hash_parts = line.split("--hash=")
        requirement = Requirement(requirement_text.strip())
        pins = [s for s in requirement.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(requirement.specifier) == 1, f"{name}: {line} not pinned"
        entries[canonicalize_name(requirement.name)] = (
            pins[0].version,
            [h.strip() for h in hash_parts],
        )
    return entries


def runtime_closure(lock: dict[str, tuple[str, list[str]]], swap: dict[str, str]) -> set[str]:
    """Every package pyproject's runtime dependencies pull in on the locks' platform, each
    checked against the lock's pin, following installed metadata (`swap` names a locked
    package whose metadata is read from another distribution of the same version: the CPU
    ONNX Runtime from the GPU one, which is what Linux x86-64 installs here)."""
    seen: set[str] = set()
    pending = [(Requirement(r), "pyproject.toml") for r in PYPROJECT["project"]["dependencies"]]
    while pending:
        requirement, wanted_by = pending.pop()
        name = canonicalize_name(swap.get(requirement.name, requirement.name))
        if requirement.marker and not requirement.marker.evaluate(LOCK_PLATFORM):
            continue
        assert name in lock, f"{name} (wanted by {wanted_by}) is missing from the lock"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {requirement} (from {wanted_by})"
        )
        extras = set(requirement.extras)
        if name in seen and not extras:
            continue
        seen.add(name)
        source = {v: k for k, v in swap.items()}.get(name, name)
        installed = importlib.metadata.version(source)
        assert installed == version, (
            f"installed {source} {installed}, locked {version}: run make (the venv is rebuilt "
            "with the lock's versions when requirements/gpu.txt changes)"
        )
        for text in importlib.metadata.requires(source) or []:
            dependency = Requirement(text)
            marker: Marker | None = dependency.marker
            if marker is not None and not any(
                marker.evaluate({**LOCK_PLATFORM, "extra": extra}) for extra in {"", *extras}
            ):
                continue
            dependency.marker = None
            pending.append((dependency, name))
    return seen


@pytest.mark.parametrize(
    ("lock_name", "swap"),
    [("gpu.txt", {}), ("cpu.txt", {GPU_ORT: CPU_ORT})],
)
def test_lock_pins_exactly_the_runtime_with_hashes(lock_name: str, swap: dict[str, str]) -> None:
    lock = read_lock(lock_name)
    assert all(hashes for _, hashes in lock.values()), "every pin needs its hashes"
    for line in (REQUIREMENTS / lock_name).read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "--")):
            marker = Requirement(line.split("--hash=")[0]).marker
            assert marker is None or marker.evaluate(LOCK_PLATFORM), f"skipped on Linux: {line}"
    closure = runtime_closure(lock, swap)
    assert closure == set(lock), f"locked but never required: {set(lock) - closure}"


def test_cpu_lock_differs_from_gpu_lock_only_in_onnxruntime_build() -> None:
    cpu, gpu = read_lock("cpu.txt"), read_lock("gpu.txt")
    assert GPU_ORT not in cpu, "the CPU image must not get onnxruntime-gpu"
    assert cpu[CPU_ORT][0] == gpu[GPU_ORT][0], "both images run the same ONNX Runtime version"
    shared = {k: v[0] for k, v in cpu.items() if k != CPU_ORT}
    assert shared == {k: v[0] for k, v in gpu.items() if k != GPU_ORT}


def test_build_backend_is_pinned_to_what_pyproject_asks() -> None:
    build = read_lock("build.txt")
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        version = build[canonicalize_name(requirement.name)][0]
        assert requirement.specifier.contains(version), f"{requirement} vs {version}"


# -- the image's command, run --------------------------------------------------------------


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
