"""Building and running the image with podman where there is no Docker engine and no
registry (the CI machine, a developer's laptop without Docker): podman configured for a
host without systemd, stand-ins for the Dockerfile's two base images made locally, and a
build that reaches the package index through the Dockerfile's own build secrets (a CA
bundle for a TLS-intercepting proxy, an index URL for a mirror).

The stand-ins carry the real images' names, so the Dockerfile builds unchanged, but not
their contents: the Python one is Debian bookworm's own Python 3.11.2 (debootstrap), not
python.org's 3.11.14, which serves the same cp311 wheels.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.conftest import ROOT

#: Kept between runs on one machine (images, base rootfs): a second run skips the bases.
WORK = ROOT / "build" / "container-check"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: The host's CA bundle, handed to the build as the ca_bundle secret where it exists.
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The container check's step timings, printed at the end of the session (conftest.py).
TIMINGS: dict[str, float] = {}


def base_images(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """The Dockerfile's ARG defaults for its base images: PYTHON_IMAGE, UV_IMAGE."""
    text = dockerfile.read_text()
    found = dict(re.findall(r"^ARG (PYTHON_IMAGE|UV_IMAGE)=(\S+)$", text, re.MULTILINE))
    assert set(found) == {"PYTHON_IMAGE", "UV_IMAGE"}, found
    return found


def qualified(name: str) -> str:
    """`python:3.11` -> `docker.io/library/python:3.11`, as the Dockerfile's FROM resolves."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


class Podman:
    """podman with a configuration and storage of its own under `work`."""

    def __init__(self, work: Path = WORK) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = int(Path("/proc/sys/kernel/pid_max").read_text())
        # The OCI runtime cannot raise hard limits above the caller's (no CAP_SYS_RESOURCE in
        # a container host), crun refuses hybrid cgroups, and there is no systemd here.
        (work / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        )
        (work / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{work / "storage"}"\n'
            f'runroot = "{work / "run"}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(work / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
        }

    def __call__(
        self, *args: str, timeout: float = 600, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman args...`; raises with its output when it fails."""
        done = subprocess.run(
            ["podman", *args], env=self.env, input=input, capture_output=True, timeout=timeout
        )
        result = subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def unusable(self) -> str | None:
        """Why podman cannot run containers here, or None."""
        missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
        if missing:
            return f"{', '.join(missing)} not installed (.ci/run installs them from Debian)"
        try:
            self("info", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"podman cannot run here: {str(exc)[-300:]}"
        return None

    def has_image(self, name: str) -> bool:
        return (
            subprocess.run(
                ["podman", "image", "exists", name], env=self.env, capture_output=True
            ).returncode
            == 0
        )

    def import_tree(self, tree: Path, name: str, *changes: str) -> None:
        """A directory's files as an image named `name` (and its qualified name)."""
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["tar", "-C", str(tree), "-c", "."], stdout=archive, check=True)
            archive.seek(0)
            flags = [arg for change in changes for arg in ("--change", change)]
            self("import", *flags, "-", name, input=archive.read())
        if qualified(name) != name:
            self("tag", name, qualified(name))


def debian_mirror() -> str:
    """The Debian mirror apt uses here (debootstrap needs one)."""
    if DEBIAN_SOURCES.exists():
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", DEBIAN_SOURCES.read_text(), re.MULTILINE)
        if found:
            return found[1]
    return DEFAULT_MIRROR


def make_python_base(podman: Podman, name: str) -> None:
    """Debian bookworm with its python3, CA certificates and netbase, under `name`, with
    python3 at /usr/local/bin as in the real image (about a minute, once per machine)."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (.ci/run installs it from Debian)")
    with tempfile.TemporaryDirectory(dir=podman.work) as scratch:
        tree = Path(scratch) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,ca-certificates,netbase",
             "bookworm", str(tree), debian_mirror()],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        (tree / "usr/local/bin/python3").symlink_to("/usr/bin/python3.11")
        podman.import_tree(tree, name, f"ENV PATH={PATH}", "ENV LANG=C.UTF-8")


def make_uv_base(podman: Podman, name: str) -> None:
    """/uv and /uvx from the uv wheel on PyPI of the image's version, under `name`."""
    version = name.rsplit(":", 1)[1]
    with tempfile.TemporaryDirectory(dir=podman.work) as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             f"uv=={version}", "-d", scratch],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        (wheel,) = Path(scratch).glob("uv-*.whl")
        tree = Path(scratch) / "tree"
        tree.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for tool in ("uv", "uvx"):
                target = tree / tool
                target.write_bytes(archive.read(f"uv-{version}.data/scripts/{tool}"))
                target.chmod(0o755)
        podman.import_tree(tree, name)
