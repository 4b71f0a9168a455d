"""The cores a worker's threads are sized from: affinity, capped by a cgroup CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cores import available_cores, cgroup_cpu_quota


def affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_quota_is_read_from_cgroup_v2_or_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_a_quota_caps_the_cores_and_rounds_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one thread
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity() + 10) * 100000} 100000\n")
    assert available_cores(tmp_path) == affinity()  # a quota above the cores changes nothing


def test_no_cgroup_means_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cores(tmp_path) == affinity()
