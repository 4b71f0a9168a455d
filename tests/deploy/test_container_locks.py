"""The requirements locks: each pins exactly the runtime pyproject.toml asks for on the
locks' platform (Linux x86-64, CPython 3.11), every pin with its hashes and matching what
this environment has installed; the CPU and GPU locks differ only in the ONNX Runtime build,
the build backend is pinned to what pyproject asks, and the development lock pins the test
tools."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT
from tests.deploy.locks import CPU_ORT, GPU_ORT, REQUIREMENTS, read_lock

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


def test_the_development_lock_pins_the_tools_the_suite_runs_with() -> None:
    """requirements/dev.txt pins each test, bench, optimize and models requirement at a
    version it allows, agrees with gpu.txt, and the test tools installed are its versions
    (a new release of one, like tomlkit 0.15.3 dropping a method, cannot reach CI unseen)."""
    dev, gpu = read_lock("dev.txt"), read_lock("gpu.txt")
    for extra in ("test", "bench", "optimize", "models"):
        for text in PYPROJECT["project"]["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(LOCK_PLATFORM):
                continue
            name = canonicalize_name(requirement.name)
            assert name in dev, f"{name} ({extra} extra) is missing from dev.txt: run make lock"
            assert requirement.specifier.contains(dev[name][0], prereleases=True), (
                f"dev.txt pins {name}=={dev[name][0]}, but pyproject asks {requirement}"
            )
            if extra == "test":
                installed = importlib.metadata.version(requirement.name)
                assert installed == dev[name][0], f"installed {name} {installed}: run make"
    shared = set(dev) & set(gpu)
    assert {k: dev[k][0] for k in shared} == {k: gpu[k][0] for k in shared}
