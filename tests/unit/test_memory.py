"""Giving memory back: glibc's mmap threshold is fixed only where the user left it alone,
and the heap is trimmed where the C library can."""

from __future__ import annotations

import platform

import pytest

from app.runtime.memory import fix_mmap_threshold, return_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"
THRESHOLD = 32 * 1024 * 1024


@pytest.mark.skipif(not GLIBC, reason="mallopt and malloc_trim are glibc's")
def test_with_glibc_the_threshold_is_fixed_and_the_heap_trimmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert fix_mmap_threshold(THRESHOLD)
    assert return_freed_memory()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536"),
    ],
)
def test_a_threshold_the_environment_sets_is_kept(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert not fix_mmap_threshold(THRESHOLD)


def test_zero_keeps_the_c_librarys_own_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert not fix_mmap_threshold(0)
