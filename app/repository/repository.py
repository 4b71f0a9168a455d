"""The model repository: which models exist, which versions are loaded, and their state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.batching import BatchObserver
from app.errors import ModelLoadError, NotFoundError, UnavailableError
from app.repository.config import load_model_config
from app.repository.loader import MODEL_FILE, ServingDefaults, load_version
from app.repository.state import UNLOADED, LoadedVersion, ModelEntry, ModelState
from app.runtime.memory import return_freed_memory

log = logging.getLogger(__name__)

#: Model names are directory names: letters, digits, `_`, `-`, `.`; never a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

ObserverFactory = Callable[[str, int], BatchObserver | None]
#: Told (model, version) once a version is gone for good: drained, released, not serving.
VersionGone = Callable[[str, int], None]


class ModelRepository:
    """Scans a directory of models and owns the loaded versions and their workers."""

    def __init__(
        self,
        root: Path,
        defaults: ServingDefaults | None = None,
        observer_factory: ObserverFactory | None = None,
        on_version_gone: VersionGone | None = None,
    ) -> None:
        self.root = root
        self._defaults = defaults or ServingDefaults()
        self._observer_factory = observer_factory
        self._on_version_gone = on_version_gone
        self.models: dict[str, ModelEntry] = {}
        #: Replaced and unloaded versions still serving what they hold, then released.
        self._retiring: set[asyncio.Task[None]] = set()
        #: One load or unload at a time per model (the API and the poller may both ask).
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- loading --------------------------------------------------------------------------

    def model_dirs(self) -> list[Path]:
        """Model directories under the root, sorted; other entries are skipped with a log."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        found = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.name.startswith((".", "_")):
                continue
            if not MODEL_NAME.match(path.name):
                log.warning("skipping %s: not a valid model name", path)
                continue
            found.append(path)
        return found

    async def load_all(self) -> None:
        """Load every model found, each in a thread; one failure does not stop the others."""
        for path in self.model_dirs():
            self.models[path.name] = ModelEntry(name=path.name, path=path)
        for entry in list(self.models.values()):
            with contextlib.suppress(ModelLoadError):  # recorded in the entry and the log
                await self._load(entry)

    async def _load(self, entry: ModelEntry) -> None:
        """Load (or reload) every selected version of `entry`, warmed, then swap them in and
        drain the versions they replace. A failed reload keeps the old versions serving."""
        try:
            versions = await asyncio.to_thread(self._load_versions, entry)
        except Exception as exc:  # ModelLoadError, or a bug/ORT surprise: never fatal
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"unexpected error: {exc!r}"
            log.error("model %s failed to load: %s", entry.name, reason)
            if not entry.versions:
                entry.state, entry.reason = ModelState.UNAVAILABLE, reason
            raise ModelLoadError(reason) from None
        for loaded in versions.values():
            loaded.start()
        replaced = entry.versions
        entry.versions, entry.state, entry.reason = versions, ModelState.READY, ""
        self._retire_later(entry.name, replaced)

    async def load(self, name: str) -> None:
        """Load or reload one model by name (the v2 repository extension's load)."""
        async with self._locks[name]:
            entry = self.models.get(name)
            if entry is None:
                path = self._model_dir(name)
                entry = self.models[name] = ModelEntry(name=name, path=path)
            await self._load(entry)

    async def unload(self, name: str) -> None:
        """Stop serving a model: new requests get 503, queued ones are still served."""
        async with self._locks[name]:
            entry = self.entry(name)
            replaced = entry.versions
            entry.versions, entry.state, entry.reason = {}, ModelState.UNAVAILABLE, UNLOADED
            self._retire_later(name, replaced)

    async def remove(self, name: str) -> None:
        """Unload a model whose directory is gone and drop it from the index (new requests
        get 404); queued ones are still served."""
        await self.unload(name)
        async with self._locks[name]:
            if self.models.get(name) is not None and not self.models[name].versions:
                del self.models[name]

    def _model_dir(self, name: str) -> Path:
        """`<root>/<name>`, only for a valid name naming a directory directly in the root."""
        if not MODEL_NAME.match(name):
            raise NotFoundError(f"'{name}' is not a valid model name")
        path = self.root / name
        if not path.is_dir() or path.resolve().parent != self.root.resolve():
            raise NotFoundError(f"no model directory '{name}' in the repository")
        return path

    def _retire_later(self, name: str, versions: dict[int, LoadedVersion]) -> None:
        """Retire replaced versions in the background (`_retire`); `versions` is theirs."""
        if not versions:
            return
        task = asyncio.get_running_loop().create_task(self._retire(name, versions))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, name: str, versions: dict[int, LoadedVersion]) -> None:
        """Serve what the versions hold, stop their threads and release their sessions,
        drop the last references to them, forget those not serving again, and hand the
        freed memory back to the OS."""
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
                entry = self.models.get(name)
                for number in numbers:
                    if entry is None or number not in entry.versions:
                        self._on_version_gone(name, number)
        await asyncio.to_thread(return_freed_memory)
        listed = ", ".join(f"v{number}" for number in numbers)
        log.info("model %s: released %s (what they held served, sessions freed)", name, listed)

    async def settled(self) -> None:
        """Wait until every version unloaded or replaced so far is retired."""
        while self._retiring:
            await asyncio.gather(*self._retiring)

    def _load_versions(self, entry: ModelEntry) -> dict[int, LoadedVersion]:
        config = load_model_config(entry.path)
        on_disk = [
            number
            for p in entry.path.iterdir()
            if (number := parse_version(p.name)) is not None and (p / MODEL_FILE).is_file()
        ]
        if not on_disk:
            raise ModelLoadError(
                f"{entry.path}: no version directory with a {MODEL_FILE} "
                f"(expected {entry.path}/1/{MODEL_FILE})"
            )
        selected = config.version_policy.select(on_disk)
        if not selected:
            raise ModelLoadError(
                f"{entry.path}: version_policy selects none of the versions on disk {on_disk}"
            )
        loaded: dict[int, LoadedVersion] = {}
        for version in selected:
            observer = (
                self._observer_factory(entry.name, version) if self._observer_factory else None
            )
            try:
                loaded[version] = load_version(
                    entry.name,
                    version,
                    entry.path / str(version),
                    config=config,
                    defaults=self._defaults,
                    observer=observer,
                )
            except ModelLoadError as exc:
                raise ModelLoadError(f"version {version}: {exc}") from None
        return loaded

    def begin_drain(self) -> None:
        for entry in self.models.values():
            for loaded in entry.versions.values():
                loaded.begin_drain()

    async def close(self) -> None:
        """Drain every batcher: queued requests are served, then workers stop."""
        versions = [v for e in self.models.values() for v in e.versions.values()]
        await asyncio.gather(*(v.close() for v in versions), *self._retiring)

    # -- lookups --------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            # "Request for unknown model: ..." is Triton's wording, which its clients match.
            raise NotFoundError(
                f"Request for unknown model: '{_shown(name)}' is not found; see POST "
                "/v2/repository/index for the models this server has"
            )
        return entry

    def version(self, name: str, version: str | None = None) -> LoadedVersion:
        """The version asked for (the highest loaded one when None), ready to serve."""
        entry = self.entry(name)
        if entry.state is not ModelState.READY:
            detail = f": {entry.reason}" if entry.reason else ""
            if entry.state is ModelState.LOADING:
                raise UnavailableError(f"model '{name}' is not ready yet (LOADING){detail}")
            raise UnavailableError(
                f"Request for unknown model: '{name}' has no available versions "
                f"({entry.state}{detail})"
            )
        if version is None or version == "":
            loaded = entry.latest()
            assert loaded is not None
            return loaded
        number = parse_version(version)
        chosen = entry.versions.get(number) if number is not None else None
        if chosen is None:
            raise NotFoundError(
                f"Request for unknown model: '{name}' version {_shown(version)} is not found; "
                f"loaded versions: {sorted(entry.versions)}"
            )
        return chosen

    def all_ready(self) -> bool:
        return all(e.state is ModelState.READY for e in self.models.values())

    def index(self) -> list[dict[str, Any]]:
        """The v2 repository index: one row per loaded version, one per failed model."""
        rows: list[dict[str, Any]] = []
        for entry in self.models.values():
            if entry.versions:
                rows.extend(
                    {
                        "name": entry.name,
                        "version": str(v),
                        "state": entry.state.value,
                        "reason": entry.reason,
                    }
                    for v in sorted(entry.versions)
                )
            else:
                rows.append(
                    {"name": entry.name, "state": entry.state.value, "reason": entry.reason}
                )
        return rows


#: A version is a positive decimal number of at most this many digits (an int64).
MAX_VERSION_DIGITS = 18


def parse_version(text: str) -> int | None:
    """The version number `text` names, or None when it names none that could exist."""
    if not (0 < len(text) <= MAX_VERSION_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _shown(text: str, limit: int = 64) -> str:
    """`text` as an error message may quote it: shortened, so a huge path stays short."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
