"""The model repository: which models exist, which versions are loaded, and their state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.errors import ModelLoadError, ServingError, UnavailableError
from app.repository.budget import shown_bytes
from app.repository.loader import ServingDefaults
from app.repository.lookup import (
    find_entry,
    find_version,
    index_rows,
    model_dir,
    model_dirs,
)
from app.repository.model_versions import (
    ObserverFactory,
    Selection,
    load_measured,
    selected_versions,
)
from app.repository.residency import (
    CostBook,
    MemoryBudgetFullError,
    ResidencyObserver,
    ResidencySettings,
    Room,
    load_finished,
    over_budget,
    wait_for_load,
)
from app.repository.retirement import Retirement, VersionGone
from app.repository.state import (
    NOT_LOADED,
    UNLOADED,
    LoadedVersion,
    ModelEntry,
    ModelState,
    Uses,
)
from app.runtime.memory import prime_runtime

log = logging.getLogger(__name__)


class ModelRepository:
    """Scans a directory of models and owns the loaded versions and their workers.

    Without a memory budget every model loads at start and stays. With one, only pinned
    models do; the others load when a request asks for them (one load per model however
    many ask: single flight) and are unloaded, those asked least per byte first, when a
    load needs their room and nothing holds them (app.repository.residency)."""

    def __init__(
        self,
        root: Path,
        defaults: ServingDefaults | None = None,
        *,
        observer_factory: ObserverFactory | None = None,
        on_version_gone: VersionGone | None = None,
        residency: ResidencySettings | None = None,
        residency_observer: ResidencyObserver | None = None,
        costs: CostBook | None = None,
    ) -> None:
        self.root = root
        self._defaults = defaults or ServingDefaults()
        self._observer_factory = observer_factory
        self.residency = residency or ResidencySettings()
        self._residency_observer = residency_observer
        self._costs = costs
        self.models: dict[str, ModelEntry] = {}
        #: One load or unload at a time per model (the API and the poller may both ask).
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Loads run a bounded number at a time, so each measures what it alone added.
        self._load_slots = asyncio.Semaphore(self.residency.max_concurrent_loads)
        #: ... on threads of their own: the weights then come from the same few malloc
        #: arenas, where what an unloaded model freed is reused by the next load rather
        #: than kept resident in the arena of whichever pool thread ran it.
        self._load_threads = ThreadPoolExecutor(
            self.residency.max_concurrent_loads, thread_name_prefix="model-load"
        )
        #: What loads in progress are expected to take, and the wait for room.
        self._room = Room(self.residency.budget_bytes or 0, self.residency.room_wait_s)
        #: Requests holding versions: told to the room, read by loads measuring their cost.
        self._uses = Uses(on_idle=self._room.changed)
        #: Replaced and unloaded versions still serving what they hold, then released.
        self._retirement = Retirement(
            models=self.models, locks=self._locks, on_version_gone=on_version_gone,
            on_released=self._room.changed, observer=residency_observer,
        )  # fmt: skip

    @property
    def budget_bytes(self) -> int | None:
        return self.residency.budget_bytes

    def resident_bytes(self) -> int:
        """What the resident models hold, as measured when they loaded."""
        return sum(entry.resident_bytes for entry in self.models.values())

    # -- loading --------------------------------------------------------------------------

    def model_dirs(self) -> list[Path]:
        return model_dirs(self.root)

    async def load_all(self) -> None:
        """Load every model found (under a budget, only the pinned ones), each in a thread;
        one failure does not stop the others."""
        for path in self.model_dirs():
            self._add(ModelEntry(name=path.name, path=path))
        await asyncio.to_thread(prime_runtime)  # before the first model is measured
        for entry in list(self.models.values()):
            if self.budget_bytes is not None and not await self._register(entry):
                continue
            with contextlib.suppress(ModelLoadError, ServingError):  # in the entry and the log
                await self._single_flight(entry, "startup")

    async def _register(self, entry: ModelEntry) -> bool:
        """Under a budget: read what loading `entry` is expected to take, and whether it is
        pinned; True when it is (load it now), else it waits for a request."""
        try:
            config, _ = await asyncio.to_thread(self._selected, entry)
        except ModelLoadError as exc:
            log.error("model %s cannot load: %s", entry.name, exc)
            entry.state, entry.reason, entry.on_demand = ModelState.UNAVAILABLE, str(exc), False
            return False
        entry.pinned = config.pinned or entry.name in self.residency.preload
        if not entry.pinned and not entry.versions:
            entry.state, entry.reason, entry.on_demand = ModelState.UNAVAILABLE, NOT_LOADED, True
        return entry.pinned

    def _add(self, entry: ModelEntry) -> ModelEntry:
        self.models[entry.name] = entry
        if self._residency_observer is not None:
            self._residency_observer.model_known(entry.name)
        return entry

    def _single_flight(self, entry: ModelEntry, reason: str) -> asyncio.Task[None]:
        """The load of `entry` in progress, started now for `reason` if none is: everyone
        who asks while it runs waits for this one."""
        if entry.loading is None:
            task = asyncio.get_running_loop().create_task(
                self._load_in_budget(entry, reason), name=f"load model {entry.name}"
            )
            entry.loading = task
            task.add_done_callback(lambda done: load_finished(entry, done))
        return entry.loading

    async def _load_in_budget(self, entry: ModelEntry, reason: str) -> None:
        """Load `entry` once there is room for it under the budget. When requests hold the
        room, wait for them to let go (up to the room wait) without holding a load slot,
        so that loads which fit go meanwhile."""
        loop = asyncio.get_running_loop()
        give_up, patient = loop.time() + self.residency.room_wait_s, True
        while True:
            try:
                return await self._load_in_slot(entry, reason, patient=patient)
            except MemoryBudgetFullError as full:
                if patient and loop.time() >= give_up:
                    patient = False  # a last look, where any idle model may go
                    continue
                await self._room.wait(full, give_up)

    async def _load_in_slot(self, entry: ModelEntry, reason: str, *, patient: bool) -> None:
        """Make room for `entry` under the budget, load it, and if it measured more than
        expected, unload what may go until everything fits again."""
        # The load slot before the model's lock: a load waiting for a slot must not hold
        # a lock that the load in the slot needs to retire the models it evicts.
        async with self._load_slots, self._locks[entry.name]:
            budget = self.budget_bytes
            selection = None
            if budget is not None:
                selection, entry.expected_bytes = await asyncio.to_thread(self._expected, entry)
                now = asyncio.get_running_loop().time()
                victims = self._room.victims(entry, self.models.values(), now, patient=patient)
                await self._retirement.evict(victims)
            reserved = self._room.reserved
            reserved[entry.name] = entry.expected_bytes
            began = time.perf_counter()
            try:
                await self._load(entry, selection)
            finally:
                del reserved[entry.name]
                self._room.changed()
            seconds = time.perf_counter() - began
            log.info(
                "model %s: loaded in %.3f s for %s, holding %s",
                entry.name, seconds, reason, shown_bytes(entry.resident_bytes),
            )  # fmt: skip
            if self._residency_observer is not None:
                warmup_s = sum(v.warmup_s for v in entry.versions.values())
                self._residency_observer.model_loaded(
                    entry.name, reason, seconds=seconds, warmup_s=warmup_s
                )
            entry.on_demand = budget is not None
            if budget is None:
                return
            if entry.resident_bytes > budget:
                self._unload_now(entry, reason="larger than the memory budget", on_demand=False)
                raise UnavailableError(
                    f"model '{entry.name}' took {shown_bytes(entry.resident_bytes)} to load, "
                    f"more than the whole memory budget of {shown_bytes(budget)}; raise "
                    "BATCHSERVE_MODEL_MEMORY"
                )
            await self._retirement.evict(
                over_budget(
                    budget=budget, reserved=sum(reserved.values()),
                    resident=self.models.values(), keep=entry,
                    now=asyncio.get_running_loop().time(),
                )
            )  # fmt: skip

    async def _load(self, entry: ModelEntry, selection: Selection | None = None) -> None:
        """Load (or reload) every selected version of `entry`, warmed, then swap them in and
        drain the versions they replace. A failed reload keeps the old versions serving."""
        if not entry.versions:
            entry.state, entry.reason = ModelState.LOADING, ""
        try:
            versions = await asyncio.get_running_loop().run_in_executor(
                self._load_threads, self._load_versions, entry, selection
            )
        except Exception as exc:  # ModelLoadError, or a bug/ORT surprise: never fatal
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"unexpected error: {exc!r}"
            log.error("model %s failed to load: %s", entry.name, reason)
            if not entry.versions:
                entry.state, entry.reason, entry.on_demand = ModelState.UNAVAILABLE, reason, False
            raise ModelLoadError(reason) from None
        now = asyncio.get_running_loop().time()
        for loaded in versions.values():
            loaded.last_used = now
            loaded.uses = self._uses
            loaded.start()
        replaced = entry.versions
        entry.versions, entry.state, entry.reason = versions, ModelState.READY, ""
        self._retirement.later(entry.name, replaced)

    async def load(self, name: str, *, reason: str = "explicit") -> None:
        """Load or reload one model by name (the v2 repository extension's load)."""
        entry = self.models.get(name)
        if entry is None:
            entry = self._add(ModelEntry(name=name, path=self._model_dir(name)))
        await asyncio.shield(self._single_flight(entry, reason))

    async def refresh(self, name: str) -> None:
        """A model's files are new or changed: reload it where it is resident (or there is
        no budget); else the next request loads the new files."""
        entry = self.models.get(name)
        if self.budget_bytes is None or (entry is not None and entry.versions):
            await self.load(name, reason="reload")
            return
        if entry is None:
            entry = self._add(ModelEntry(name=name, path=self._model_dir(name)))
        if await self._register(entry):
            await self.load(name, reason="reload")

    def load_on_request(self, name: str) -> asyncio.Future[None] | None:
        """Under a budget, for a model known but not resident: the load a request waits
        for (single flight), which raises UnavailableError if it fails; None otherwise."""
        entry = self.entry(name)
        entry.demand.note(asyncio.get_running_loop().time())
        if entry.versions or not entry.on_demand:
            return None
        if self._residency_observer is not None:
            self._residency_observer.load_waited(name)
        load = self._single_flight(entry, "request")
        return asyncio.ensure_future(wait_for_load(entry, load, self._residency_observer))

    @contextlib.contextmanager
    def waiting_for(self, name: str) -> Iterator[None]:
        """A request waits for `name`'s load and then its answer: the model is not evicted
        meanwhile, so the load it waited for is not undone before its turn."""
        entry = self.entry(name)
        entry.waiters += 1
        try:
            yield
        finally:
            entry.waiters -= 1
            if not entry.waiters:
                self._room.changed()

    async def unload(self, name: str) -> None:
        """Stop serving a model: new requests get 503, queued ones are still served."""
        async with self._locks[name]:
            self._unload_now(self.entry(name), reason=UNLOADED, on_demand=False)

    def _unload_now(self, entry: ModelEntry, *, reason: str, on_demand: bool) -> None:
        """Take `entry` out of service now; its versions serve what they hold, then go."""
        replaced = entry.versions
        entry.versions, entry.state, entry.reason = {}, ModelState.UNAVAILABLE, reason
        entry.on_demand = on_demand
        self._retirement.later(entry.name, replaced)

    async def remove(self, name: str) -> None:
        """Unload a model whose directory is gone and drop it from the index (new requests
        get 404); queued ones are still served."""
        await self.unload(name)
        async with self._locks[name]:
            if self.models.get(name) is not None and not self.models[name].versions:
                del self.models[name]

    def _model_dir(self, name: str) -> Path:
        return model_dir(self.root, name)

    async def settled(self) -> None:
        """Wait until every version unloaded or replaced so far is retired."""
        await self._retirement.settled()

    def _selected(self, entry: ModelEntry) -> Selection:
        return selected_versions(entry.path)

    def _expected(self, entry: ModelEntry) -> tuple[Selection | None, int]:
        """The versions a load of `entry` takes and what they are expected to hold: as
        measured before, else estimated (none and 0 when the selection fails: the load
        itself then fails, with the reason)."""
        try:
            selection = self._selected(entry)
        except ModelLoadError:
            return None, 0
        if self._costs is None:
            return selection, 0
        dirs = (entry.path / str(version) for version in selection[1])
        return selection, self._costs.expected(dirs)

    def _load_versions(
        self, entry: ModelEntry, selection: Selection | None
    ) -> dict[int, LoadedVersion]:
        config, selected = selection or self._selected(entry)
        cores = self._defaults.cores
        # A core in the background: the models serving keep theirs (app.batching.cores).
        with cores.held(1, background=True) if cores else contextlib.nullcontext():
            return load_measured(
                entry.name, entry.path, config=config, selected=selected,
                defaults=self._defaults, observer_factory=self._observer_factory,
                costs=self._costs, quiet_mark=self._uses.quiet_mark,
            )  # fmt: skip

    def begin_drain(self) -> None:
        for entry in self.models.values():
            for loaded in entry.versions.values():
                loaded.begin_drain()

    async def close(self) -> None:
        """Finish the loads in progress (requests wait for them), then drain every batcher:
        queued requests are served, then workers stop."""
        loads = [e.loading for e in self.models.values() if e.loading is not None]
        await asyncio.gather(*loads, return_exceptions=True)
        versions = [v for e in self.models.values() for v in e.versions.values()]
        await asyncio.gather(*(v.close() for v in versions), *self._retirement.running)
        self._load_threads.shutdown(wait=False)

    # -- lookups --------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        return find_entry(self.models, name)

    def version(self, name: str, version: str | None = None) -> LoadedVersion:
        """The version asked for (the highest loaded one when None), ready to serve."""
        return find_version(self.models, name, version)

    def all_ready(self) -> bool:
        """Every model serves, or (under a budget) waits for a request to load it."""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """The models that neither serve nor wait for a request to load them."""
        return [
            name
            for name, entry in self.models.items()
            if entry.state is not ModelState.READY and not entry.on_demand
        ]

    def index(self) -> list[dict[str, Any]]:
        """The v2 repository index: one row per loaded version, one per model not loaded."""
        return index_rows(self.models)
