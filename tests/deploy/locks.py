"""The requirements locks (requirements/*.txt) as the container tests read them: each lock's
pins with their hashes, and the two ONNX Runtime builds the CPU and GPU images install."""

from __future__ import annotations

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

REQUIREMENTS = ROOT / "requirements"
GPU_ORT, CPU_ORT = "onnxruntime-gpu", "onnxruntime"


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
