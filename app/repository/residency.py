"""Which models stay in memory under a budget: what a load is expected to take, and which
resident models go to make room for it: those asked for least per byte they hold first (a
tiny popular model stays while a large rarely asked one goes), the least recently used
first among equals.

Residency is per model, not per version: the v2 repository extension loads and unloads
models, a model's version policy picks the versions that serve together, and a reload swaps
them together; each version's cost is still measured and shown on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    #: How long a load waits for requests to let go of the models in its way.
    room_wait_s: float = 5.0


class MemoryBudgetFullError(UnavailableError):
    """No room for a load: what holds the budget is in use or pinned (HTTP 503, retry)."""

    def __init__(self, message: str, *, requests_hold_room: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = RETRY_AFTER_S
        #: Whether the room is held by requests (not pinned models, not loads), which let
        #: go of it once answered: a load may wait for them.
        self.requests_hold_room = requests_hold_room


def choose_evictions(
    entry: ModelEntry,
    *,
    budget: int,
    reserved: int,
    resident: Iterable[ModelEntry],
    now: float = 0.0,
    patient: bool = False,
) -> list[ModelEntry]:
    """The resident models to unload, those asked for least per byte first (`eviction_order`),
    so that `entry` fits with what loads in progress have `reserved`; raises
    MemoryBudgetFullError when those that may go (not pinned, not in use) do not make
    enough room.

    A `patient` choice never passes over a model that requests hold to unload one asked
    for more per byte: it refuses (for the load to wait for them) instead."""
    others = [e for e in resident if e is not entry and e.versions]
    need = entry.expected_bytes
    if need > budget:
        raise UnavailableError(
            f"model '{entry.name}' needs {shown_bytes(need)}, more than the whole memory "
            f"budget of {shown_bytes(budget)}; raise BATCHSERVE_MODEL_MEMORY"
        )
    free = budget - reserved - sum(e.resident_bytes for e in others) - entry.resident_bytes
    chosen: list[ModelEntry] = []
    candidates = [e for e in others if not e.pinned]
    if patient:
        order, room = eviction_order(candidates, now), free
        candidates = []
        while room < need and order:
            candidates.append(order.pop(0))
            room += candidates[-1].resident_bytes
    movable = [e for e in candidates if not e.in_use]
    for candidate in eviction_order(movable, now):
        if free >= need:
            break
        chosen.append(candidate)
        free += candidate.resident_bytes
    if free >= need:
        return chosen
    held = ", ".join(_holder(e) for e in sorted(others, key=lambda e: -e.resident_bytes))
    loads = f"; loads in progress hold {shown_bytes(reserved)}" if reserved else ""
    held_by_requests = sum(e.resident_bytes for e in candidates if _held_by_requests(e))
    raise MemoryBudgetFullError(
        f"model '{entry.name}' needs {shown_bytes(need)} and the memory budget of "
        f"{shown_bytes(budget)} has no room: what holds it is pinned or in use ({held}{loads}); "
        "retry, or raise BATCHSERVE_MODEL_MEMORY",
        requests_hold_room=free + held_by_requests >= need,
    )


def over_budget(
    *,
    budget: int,
    reserved: int,
    resident: Iterable[ModelEntry],
    keep: ModelEntry,
    now: float,
) -> list[ModelEntry]:
    """After a load measured more than expected: the resident models (never `keep`) to
    unload, in `eviction_order`, to be within the budget again; as many as may go."""
    entries = [e for e in resident if e.versions]
    excess = reserved + sum(e.resident_bytes for e in entries) - budget
    chosen = []
    for candidate in eviction_order(entries, now):
        if excess <= 0:
            break
        if candidate is keep or candidate.pinned or candidate.in_use:
            continue
        chosen.append(candidate)
        excess -= candidate.resident_bytes
    return chosen


def eviction_order(entries: Iterable[ModelEntry], now: float) -> list[ModelEntry]:
    """Those asked for least per byte they hold first: evicting them frees the most room
    for the fewest loads again (a cache's hit ratio under a byte budget, as GreedyDual-Size
    weighs it; plain least-recently-used would unload a tiny model asked ten times a second
    to make room for a large one asked once a minute). Among equals, least recently used."""
    return sorted(entries, key=lambda e: (_per_byte(e, now), e.last_used))


def _per_byte(entry: ModelEntry, now: float) -> float:
    return entry.demand.level(now) / max(entry.resident_bytes, 1)


def _held_by_requests(entry: ModelEntry) -> bool:
    return not entry.pinned and entry.loading is None and entry.in_use


class Room:
    """The budget's account of loads in progress (what each is expected to take), and the
    wait of a load for room that requests hold: told each time a request lets go of a
    model, a load ends or a model is released."""

    def __init__(self, budget: int, wait_s: float) -> None:
        self.budget, self.wait_s = budget, wait_s
        self.reserved: dict[str, int] = {}
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    def victims(
        self, entry: ModelEntry, resident: Iterable[ModelEntry], now: float, *, patient: bool
    ) -> list[ModelEntry]:
        """What to unload for `entry` to fit (choose_evictions), or MemoryBudgetFullError.
        A `patient` load waits for less popular models that requests hold rather than
        unload a more popular idle one (a tiny model asked every few milliseconds would
        only be loaded again at once); where waiting cannot help, any idle one goes."""
        self._changed.clear()  # before looking: a change after it ends the wait that follows
        entries = list(resident)
        reserved = sum(self.reserved.values())
        try:
            return choose_evictions(
                entry, budget=self.budget, reserved=reserved, resident=entries,
                now=now, patient=patient,
            )  # fmt: skip
        except MemoryBudgetFullError as full:
            if full.requests_hold_room or not patient:
                raise
        return choose_evictions(
            entry, budget=self.budget, reserved=reserved, resident=entries,
            now=now,
        )  # fmt: skip

    async def wait(self, full: MemoryBudgetFullError, give_up: float) -> None:
        """After `victims` refused: when only models that requests hold stand in the way,
        wait (until `give_up`, loop time) for a change worth looking again; else, or past
        `give_up`, raise the refusal."""
        left = give_up - asyncio.get_running_loop().time()
        if not full.requests_hold_room or left <= 0:
            raise full
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), left)


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

    def write(
        self, version_dir: Path, cost: int, *, alone: bool = True, overshoot: int | None = None
    ) -> None:
        """Keep `cost`, measured by a load that ran `alone` or not, and how far above it
        that load went (`overshoot`, kept only from a load alone)."""
        record = {"bytes": cost, "alone": alone}
        if overshoot is not None and alone:
            record["overshoot"] = overshoot
        self._cache.write(_cost_key(version_dir), record)

    def keep(self, version_dir: Path, cost: int, *, alone: bool, overshoot: int | None) -> int:
        """The cost to count for a load that measured `cost`: the kept one when this load
        ran among requests (their allocations counted as its own), else its own, kept
        unless what is kept is already within REWRITE_TOLERANCE of it."""
        kept = self._cache.read(_cost_key(version_dir)) or {}
        known = kept.get("bytes")
        if not isinstance(known, int):
            self.write(version_dir, cost, alone=alone, overshoot=overshoot)
            return cost
        if not alone:
            return known
        if (
            not kept.get("alone", True)
            or abs(known - cost) > REWRITE_TOLERANCE * max(known, 1)
            or (overshoot is not None and "overshoot" not in kept)
        ):
            self.write(version_dir, cost, overshoot=overshoot)
        return cost

    def expected(self, version_dirs: Iterable[Path]) -> int:
        """What loading these versions is expected to take at its peak: what they hold once
        loaded (measured, else estimated) and how far above that a load went on its way
        (measured, else their files' size, which a load may hold parsed while it builds the
        sessions)."""
        total = 0
        for version_dir in version_dirs:
            files = _files_bytes(version_dir)
            kept = self._cache.read(_cost_key(version_dir)) or {}
            cost, overshoot = kept.get("bytes"), kept.get("overshoot")
            if not isinstance(cost, int):
                cost = ESTIMATE_PER_FILE_BYTE * files
            total += cost + (overshoot if isinstance(overshoot, int) else files)
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
