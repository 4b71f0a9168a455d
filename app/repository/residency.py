"""Which models stay in memory under a budget: what a load is expected to take, and which
resident models go, least recently used first, to make room for it.

Residency is per model, not per version: the v2 repository extension loads and unloads
models, a model's version policy picks the versions that serve together, and a reload swaps
them together; each version's cost is still measured and shown on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.errors import ModelLoadError, UnavailableError
from app.repository.budget import shown_bytes
from app.repository.state import ModelEntry
from app.tuning.cache import RULE_VERSION, TuningCache

#: A model never loaded on this machine is expected to take this many times its files'
#: size until its first load measures it (weights, plus ORT's arena and prepacked copies).
ESTIMATE_PER_FILE_BYTE = 2
#: A cost measured again is written only when it moved by more than this share.
REWRITE_TOLERANCE = 0.05
#: How long a client refused for want of room is asked to wait before retrying.
RETRY_AFTER_S = 1.0


class ResidencyObserver(Protocol):
    """Told of loads, evictions and the requests that waited for a load (the metrics)."""

    def model_known(self, model: str) -> None: ...

    def model_loaded(self, model: str, reason: str, *, seconds: float, warmup_s: float) -> None: ...

    def model_evicted(self, model: str) -> None: ...

    def load_waited(self, model: str) -> None: ...

    def load_refused(self, model: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ResidencySettings:
    """The budget (None: every model is loaded at start and stays, as without one), the
    models loaded at start and never evicted besides those whose config pins them, and how
    many loads may run at once."""

    budget_bytes: int | None = None
    preload: frozenset[str] = frozenset()
    max_concurrent_loads: int = 1


class MemoryBudgetFullError(UnavailableError):
    """No room for a load: what holds the budget is in use or pinned (HTTP 503, retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_after_s = RETRY_AFTER_S


def choose_evictions(
    entry: ModelEntry, *, budget: int, reserved: int, resident: Iterable[ModelEntry]
) -> list[ModelEntry]:
    """The resident models to unload, least recently used first, so that `entry` fits with
    what loads in progress have `reserved`; raises MemoryBudgetFullError when those that
    may go (not pinned, not in use) do not make enough room."""
    others = [e for e in resident if e is not entry and e.versions]
    need = entry.expected_bytes
    if need > budget:
        raise UnavailableError(
            f"model '{entry.name}' needs {shown_bytes(need)}, more than the whole memory "
            f"budget of {shown_bytes(budget)}; raise BATCHSERVE_MODEL_MEMORY"
        )
    free = budget - reserved - sum(e.resident_bytes for e in others) - entry.resident_bytes
    chosen: list[ModelEntry] = []
    movable = sorted((e for e in others if not e.pinned and not e.in_use), key=_recency)
    for candidate in movable:
        if free >= need:
            break
        chosen.append(candidate)
        free += candidate.resident_bytes
    if free >= need:
        return chosen
    held = ", ".join(_holder(e) for e in sorted(others, key=lambda e: -e.resident_bytes))
    loads = f"; loads in progress hold {shown_bytes(reserved)}" if reserved else ""
    raise MemoryBudgetFullError(
        f"model '{entry.name}' needs {shown_bytes(need)} and the memory budget of "
        f"{shown_bytes(budget)} has no room: what holds it is pinned or in use ({held}{loads}); "
        "retry, or raise BATCHSERVE_MODEL_MEMORY"
    )


def over_budget(
    *, budget: int, reserved: int, resident: Iterable[ModelEntry], keep: ModelEntry
) -> list[ModelEntry]:
    """After a load measured more than expected: the resident models (never `keep`) to
    unload, least recently used first, to be within the budget again; as many as may go."""
    entries = [e for e in resident if e.versions]
    excess = reserved + sum(e.resident_bytes for e in entries) - budget
    chosen = []
    for candidate in sorted(entries, key=_recency):
        if excess <= 0:
            break
        if candidate is keep or candidate.pinned or candidate.in_use:
            continue
        chosen.append(candidate)
        excess -= candidate.resident_bytes
    return chosen


def _recency(entry: ModelEntry) -> float:
    return entry.last_used


def _holder(entry: ModelEntry) -> str:
    why = "pinned" if entry.pinned else "in use" if entry.in_use else "idle"
    return f"'{entry.name}' {shown_bytes(entry.resident_bytes)} {why}"


def load_finished(entry: ModelEntry, task: asyncio.Task[None]) -> None:
    """The single flight has landed: the next request starts a new one if it must. Its
    failure was told to those who waited (and logged); reading it here marks it seen."""
    if entry.loading is task:
        entry.loading = None
    if not task.cancelled():
        task.exception()


async def wait_for_load(
    entry: ModelEntry, load: asyncio.Task[None], observer: ResidencyObserver | None
) -> None:
    """Wait for `load` (a waiter going away does not stop it); a load that failed is a 503
    for the waiter, naming why, and one refused for want of room is counted."""
    try:
        await asyncio.shield(load)
    except ModelLoadError as exc:
        raise UnavailableError(f"model '{entry.name}' failed to load: {exc}") from None
    except MemoryBudgetFullError:
        if observer is not None:
            observer.load_refused(entry.name)
        raise


class CostBook:
    """Each version's measured cost, kept beside the tuning results so that a later load,
    after a restart included, knows what it will take before it starts."""

    def __init__(self, cache_root: Path) -> None:
        self._cache = TuningCache(cache_root, folder="memory")

    def read(self, version_dir: Path) -> int | None:
        result = self._cache.read(_cost_key(version_dir))
        cost = result.get("bytes") if result else None
        return cost if isinstance(cost, int) and cost >= 0 else None

    def write(self, version_dir: Path, cost: int) -> None:
        """Keep `cost`, unless what is kept is already within REWRITE_TOLERANCE of it."""
        known = self.read(version_dir)
        if known is None or abs(known - cost) > REWRITE_TOLERANCE * max(known, 1):
            self._cache.write(_cost_key(version_dir), {"bytes": cost})

    def expected(self, version_dirs: Iterable[Path]) -> int:
        """What loading these versions is expected to take at its peak: what they hold once
        loaded (measured, else estimated), and their files, which a load holds parsed while
        it builds the sessions."""
        total = 0
        for version_dir in version_dirs:
            files = _files_bytes(version_dir)
            total += (self.read(version_dir) or ESTIMATE_PER_FILE_BYTE * files) + files
        return total


def _cost_key(version_dir: Path) -> dict[str, object]:
    """A cost holds for these files and this config, as tuned by this rule."""
    config = version_dir.parent / "config.toml"
    config_text = config.read_bytes() if config.is_file() else b""
    return {
        "version_dir": str(version_dir.resolve()),
        "files": [list(stat) for stat in sorted(_stats(version_dir))],
        "config": hashlib.sha256(config_text).hexdigest(),
        "tuning_rule": RULE_VERSION,
    }


def _stats(version_dir: Path) -> Iterator[tuple[str, int, int]]:
    for path in version_dir.rglob("*"):
        if path.is_file():
            stat = path.stat()
            yield str(path.relative_to(version_dir)), stat.st_size, stat.st_mtime_ns


def _files_bytes(version_dir: Path) -> int:
    return sum(size for _, size, _ in _stats(version_dir))
