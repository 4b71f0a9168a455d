"""Versions leaving service (replaced by a reload, unloaded, evicted to fit the memory
budget): they serve what they hold, then their threads stop and their sessions are
released, and the memory goes back to the system."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from app.repository.budget import shown_bytes
from app.repository.residency import ResidencyObserver
from app.repository.state import EVICTED, LoadedVersion, ModelEntry, ModelState
from app.runtime.memory import return_freed_memory

log = logging.getLogger("app.repository.repository")

#: Told (model, version) once a version is gone for good: drained, released, not serving.
VersionGone = Callable[[str, int], None]


class Retirement:
    """Retires versions, now or in the background; `on_released` is told after each."""

    def __init__(
        self,
        *,
        models: Mapping[str, ModelEntry],
        locks: Mapping[str, asyncio.Lock],
        on_version_gone: VersionGone | None,
        on_released: Callable[[], None],
        observer: ResidencyObserver | None = None,
    ) -> None:
        self._models, self._locks = models, locks
        self._on_version_gone, self._on_released = on_version_gone, on_released
        self._observer = observer
        #: Retirements running in the background.
        self.running: set[asyncio.Task[None]] = set()

    def later(self, name: str, versions: dict[int, LoadedVersion]) -> None:
        """Retire replaced versions in the background (`retire`); `versions` is theirs."""
        if not versions:
            return
        task = asyncio.get_running_loop().create_task(self.retire(name, versions))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def evict(self, victims: list[ModelEntry]) -> None:
        """Unload `victims` (none in use) to make room, and wait until their memory is
        back with the system."""
        retired = []
        for entry in victims:  # at once: nothing can start using them between the choice and this
            log.info(
                "model %s: unloading it (%s, asked least per byte) to fit the memory budget",
                entry.name, shown_bytes(entry.resident_bytes),
            )  # fmt: skip
            retired.append((entry.name, entry.versions))
            entry.versions, entry.state, entry.reason = {}, ModelState.UNAVAILABLE, EVICTED
            entry.on_demand = True
            if self._observer is not None:
                self._observer.model_evicted(entry.name)
        for index, (name, versions) in enumerate(retired, start=1):
            # One trim for all of them, after the last.
            await self.retire(name, versions, trim=index == len(retired))

    async def retire(
        self, name: str, versions: dict[int, LoadedVersion], *, trim: bool = True
    ) -> None:
        """Serve what the versions hold, stop their threads and release their sessions,
        drop the last references to them, forget those not serving again, and (`trim`)
        hand the freed memory back to the OS."""
        numbers = list(versions)
        for number in numbers:  # one at a time; the others serve on their workers meanwhile
            loaded = versions.pop(number)
            try:
                await loaded.close()
            except Exception as exc:  # a bug: the others are still closed and released
                log.error("model %s v%d did not close cleanly: %r", name, number, exc)
        del loaded  # the repository's last reference to any of them
        if self._on_version_gone is not None:
            # Under the model's lock: a load of the same version in progress keeps it.
            async with self._locks[name]:
                entry = self._models.get(name)
                for number in numbers:
                    if entry is None or number not in entry.versions:
                        self._on_version_gone(name, number)
        if trim:
            await asyncio.to_thread(return_freed_memory)
        self._on_released()
        listed = ", ".join(f"v{number}" for number in numbers)
        log.info("model %s: released %s (what they held served, sessions freed)", name, listed)

    async def settled(self) -> None:
        """Wait until every version unloaded or replaced so far is retired."""
        while self.running:
            await asyncio.gather(*self.running)
