"""The Dockerfile, checked without a Docker engine: it passes hadolint with a config that
ignores only a documented few, and keeps its promises (two targets with cpu the default,
bases pinned to exact versions, a CUDA base that fits the locked onnxruntime-gpu, non-root,
exec-form start, a health check, no build tools or caches in the final images), and the
build context holds what it copies and nothing private."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT
from tests.deploy import dockerfile
from tests.deploy.conftest import DOCKERFILE
from tests.deploy.locks import GPU_ORT, read_lock

HADOLINT = Path(sys.executable).with_name("hadolint")
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"


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
