"""What CPU this process runs on: its name and feature flags, as Linux's /proc/cpuinfo
lists them. Tuning results are keyed by it (another kind of node measures differently), and
the int8 quantizer reads the flags to tell whether its kernels can saturate."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_fields(cpuinfo: Path = CPUINFO) -> dict[str, str] | None:
    """The first processor's fields (`model name`, `flags`, ...), or None where the file
    cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _flags(fields: dict[str, str]) -> frozenset[str]:
    """x86 lists them as `flags`, ARM as `Features`."""
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The feature flags, or None where they cannot be read."""
    fields = cpuinfo_fields(cpuinfo)
    return None if fields is None else _flags(fields)


def cpu_identity(cpuinfo: Path = CPUINFO) -> str:
    """The kind of CPU, e.g. `x86_64 AMD EPYC 7B13 flags:3f2a9c0d1e4b`: the name, and a
    digest of the flags, since virtual machines often show one generic name for CPUs of
    different generations (and hide some of their features)."""
    machine = platform.machine() or "unknown"
    fields = cpuinfo_fields(cpuinfo)
    if fields is None:
        return f"{machine} {platform.processor() or 'unknown CPU'}"
    name = fields.get("model name") or fields.get("CPU part") or "unknown CPU"
    flags = " ".join(sorted(_flags(fields)))
    return f"{machine} {name} flags:{hashlib.sha256(flags.encode()).hexdigest()[:12]}"
