"""Unit tests for app.repository.config: what its objects compute. VersionPolicy selects the
versions to serve (and refuses two choices), InstanceConfig resolves its threads, sharing the
cores among the workers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import app.repository.config as config_module
from app.repository.config import InstanceConfig, VersionPolicy

# --------------------------------------------------------------------------- VersionPolicy


@pytest.mark.parametrize(
    ("policy", "available", "selected"),
    [
        (VersionPolicy(latest=2), [1, 3, 2, 7], [3, 7]),
        (VersionPolicy(latest=1), [1, 3, 2, 7], [7]),
        (VersionPolicy(latest=10), [1, 3, 2, 7], [1, 2, 3, 7]),
        (VersionPolicy(all=True), [1, 3, 2, 7], [1, 2, 3, 7]),
        (VersionPolicy(specific=[1, 7, 9]), [1, 3, 2, 7], [1, 7]),
        (VersionPolicy(specific=[9]), [1, 3, 2, 7], []),
        (VersionPolicy(), [1, 3, 2, 7], [7]),
        (VersionPolicy(), [], []),
        (VersionPolicy(all=True), [], []),
        (VersionPolicy(specific=[1]), [], []),
    ],
    ids=[
        "latest-2",
        "latest-1",
        "latest-more-than-available",
        "all-sorted",
        "specific-present-only",
        "specific-none-present",
        "default-latest-1",
        "default-empty",
        "all-empty",
        "specific-empty",
    ],
)
def test_version_policy_select(
    policy: VersionPolicy, available: list[int], selected: list[int]
) -> None:
    assert policy.select(available) == selected


def test_version_policy_select_does_not_mutate_its_argument() -> None:
    available = [3, 1, 2]

    VersionPolicy(all=True).select(available)

    assert available == [3, 1, 2]


def test_version_policy_rejects_two_choices_directly() -> None:
    with pytest.raises(ValidationError, match="give only one of latest, all, specific"):
        VersionPolicy(latest=1, all=True)


# --------------------------------------------------------------------------- InstanceConfig


def test_resolved_threads_uses_explicit_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cores", lambda: 64)

    assert InstanceConfig(threads=3).resolved_threads() == 3


@pytest.mark.parametrize(
    ("cores", "count", "threads"),
    [(16, 1, 16), (16, 4, 4), (8, 3, 2), (2, 1, 2), (2, 2, 1), (2, 4, 1), (1, 1, 1)],
)
def test_resolved_threads_share_the_cores_among_the_workers(
    monkeypatch: pytest.MonkeyPatch, cores: int, count: int, threads: int
) -> None:
    # The cores themselves (affinity, cgroup quota) are tests/unit/test_cores.py's business.
    monkeypatch.setattr(config_module, "available_cores", lambda: cores)

    assert InstanceConfig(count=count).resolved_threads() == threads
