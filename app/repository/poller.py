"""Repository polling (Triton's `--model-control-mode=poll`): serve what the directory holds.

Every `interval_s` the repository is scanned, in a thread, for what changed since the last
scan: a new model directory is loaded, a changed one (a version directory added or removed,
config.toml or a version's files rewritten) is reloaded, warmed before it takes traffic, and
a removed one is unloaded after serving what it holds. Under a memory budget, a new or
changed model that is not resident waits for a request to load it. A model caught
half-copied fails to load and keeps its old versions serving; the next change to its files
retries it. Copy a new version elsewhere and move it into place to avoid the retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from app.errors import ModelLoadError, NotFoundError, ServingError
from app.repository.repository import ModelRepository

log = logging.getLogger(__name__)

#: Per model: (relative path, size, mtime_ns) of every file under its directory.
Fingerprint = frozenset[tuple[str, int, int]]


def fingerprint(model_dir: Path) -> Fingerprint:
    """What the model's files look like now; any write, add or remove changes it."""
    found = set()
    for path in model_dir.rglob("*"):
        with contextlib.suppress(OSError):  # removed while we looked: the next scan sees it
            if path.is_file():
                stat = path.stat()
                found.add((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return frozenset(found)


def scan(repository: ModelRepository) -> dict[str, Fingerprint]:
    """Every model directory's fingerprint (blocking: run it in a thread)."""
    return {path.name: fingerprint(path) for path in repository.model_dirs()}


class RepositoryPoller:
    """Keeps `repository` in step with its directory; start() after the first load_all()."""

    def __init__(self, repository: ModelRepository, interval_s: float) -> None:
        self.repository = repository
        self.interval_s = interval_s
        self._seen: dict[str, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Remember the repository as loaded now, then poll in the background."""
        self._seen = await asyncio.to_thread(scan, self.repository)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="repository poll")

    def cancel(self) -> None:
        """Stop polling (a load in progress is abandoned; what is serving keeps serving)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        self.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception:  # a bug here must not stop polling, nor the server
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """One scan, and the loads and unloads it calls for."""
        try:
            now = await asyncio.to_thread(scan, self.repository)
        except (ModelLoadError, OSError) as exc:  # the repository itself is gone or unreadable
            log.error("repository poll: %s", exc)
            return
        for name in sorted(self._seen.keys() - now.keys()):
            log.info("repository poll: model %s was removed; unloading it", name)
            with contextlib.suppress(NotFoundError):
                await self.repository.remove(name)
        for name, files in sorted(now.items()):
            if self._seen.get(name) == files:
                continue
            log.info("repository poll: model %s is new or changed", name)
            with contextlib.suppress(ModelLoadError, ServingError):  # logged by the repository
                await self.repository.refresh(name)
        self._seen = now
