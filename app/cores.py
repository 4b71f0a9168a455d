"""How many CPU cores this process may really use.

`os.cpu_count()` is the machine's count: in a container limited to 2 CPUs on a 64-core node
it says 64, and ONNX Runtime sessions sized from it would run 64 threads on a 2-CPU quota,
thrashing. The count here is the CPU affinity mask, capped by the cgroup CPU quota (v2
`cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup may use (e.g. 1.5), or None when it sets no limit."""
    try:
        fields = (root / "cpu.max").read_text().split()  # v2: "150000 100000" or "max 100000"
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:  # v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
