"""The model repository: which models exist, which versions are loaded, and their state."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.batching import BatchObserver
from app.errors import ModelLoadError, NotFoundError, UnavailableError
from app.repository.config import load_model_config
from app.repository.loader import MODEL_FILE, load_version
from app.repository.state import LoadedVersion, ModelEntry, ModelState

log = logging.getLogger(__name__)

#: Model names are directory names: letters, digits, `_`, `-`, `.`; never a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

ObserverFactory = Callable[[str, int], BatchObserver | None]


class ModelRepository:
    """Scans a directory of models and owns the loaded versions and their workers."""

    def __init__(
        self,
        root: Path,
        default_max_queue_size: int,
        observer_factory: ObserverFactory | None = None,
        default_timeout_ms: float | None = None,
    ) -> None:
        self.root = root
        self._default_max_queue_size = default_max_queue_size
        self._default_timeout_ms = default_timeout_ms
        self._observer_factory = observer_factory
        self.models: dict[str, ModelEntry] = {}

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
            await self._load(entry)

    async def _load(self, entry: ModelEntry) -> None:
        try:
            versions = await asyncio.to_thread(self._load_versions, entry)
        except ModelLoadError as exc:
            entry.state, entry.reason = ModelState.UNAVAILABLE, str(exc)
            log.error("model %s failed to load: %s", entry.name, exc)
            return
        except Exception as exc:  # a bug or an ORT surprise must not take the server down
            entry.state, entry.reason = ModelState.UNAVAILABLE, f"unexpected error: {exc!r}"
            log.exception("model %s failed to load", entry.name)
            return
        for loaded in versions.values():
            loaded.batcher.start()
        entry.versions, entry.state, entry.reason = versions, ModelState.READY, ""

    def _load_versions(self, entry: ModelEntry) -> dict[int, LoadedVersion]:
        config = load_model_config(entry.path)
        on_disk = [
            int(p.name)
            for p in entry.path.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).is_file()
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
                    config,
                    self._default_max_queue_size,
                    observer,
                    self._default_timeout_ms,
                )
            except ModelLoadError as exc:
                raise ModelLoadError(f"version {version}: {exc}") from None
        return loaded

    def begin_drain(self) -> None:
        for entry in self.models.values():
            for loaded in entry.versions.values():
                loaded.batcher.begin_drain()

    async def close(self) -> None:
        """Drain every batcher: queued requests are served, then workers stop."""
        batchers = [v.batcher for e in self.models.values() for v in e.versions.values()]
        await asyncio.gather(*(b.close() for b in batchers))

    # -- lookups --------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            raise NotFoundError(f"unknown model '{name}'; see POST /v2/repository/index")
        return entry

    def version(self, name: str, version: str | None = None) -> LoadedVersion:
        """The version asked for (the highest loaded one when None), ready to serve."""
        entry = self.entry(name)
        if entry.state is not ModelState.READY:
            detail = f": {entry.reason}" if entry.reason else ""
            raise UnavailableError(f"model '{name}' is not ready ({entry.state}){detail}")
        if version is None or version == "":
            loaded = entry.latest()
            assert loaded is not None
            return loaded
        chosen = entry.versions.get(int(version)) if version.isdigit() else None
        if chosen is None:
            raise NotFoundError(
                f"model '{name}' has no version '{version}' loaded; loaded versions: "
                f"{sorted(entry.versions)}"
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
