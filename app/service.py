"""The server's state shared by the API routers: settings, repository, metrics, readiness."""

from __future__ import annotations

import asyncio
import logging

from app.metrics import ServerMetrics
from app.repository import ModelRepository
from app.settings import Settings

log = logging.getLogger("batchserve")


class InferenceService:
    """Owns the model repository for the lifetime of the app (see main.create_app)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.repository = ModelRepository(
            settings.model_repository,
            default_max_queue_size=settings.default_max_queue_size,
            observer_factory=self.metrics.for_version,
        )
        #: Set once the startup load has finished, whatever failed in it.
        self.loaded = asyncio.Event()
        self.draining = False
        self.startup_error: str | None = None

    async def load(self) -> None:
        """Load the repository; the server stays live (not ready) while this runs."""
        try:
            await self.repository.load_all()
        except Exception as exc:
            self.startup_error = str(exc)
            log.error("could not load the model repository: %s", exc)
        finally:
            self.loaded.set()

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if self.draining:
            return "server is shutting down"
        if not self.loaded.is_set():
            return "models are still loading"
        if self.startup_error:
            return self.startup_error
        if self.settings.strict_readiness and not self.repository.all_ready():
            failed = [n for n, e in self.repository.models.items() if e.state != "READY"]
            return f"models not ready: {failed} (see POST /v2/repository/index)"
        return None

    def models_summary(self) -> str:
        """One line of every model's versions, devices and providers, for the ready log."""
        parts: list[str] = []
        for entry in self.repository.models.values():
            if entry.versions:
                parts.extend(v.describe() for v in entry.versions.values())
            else:
                parts.append(f"{entry.name} {entry.state.value}")
        return "; ".join(parts) or "none"

    async def close(self) -> None:
        self.draining = True
        await self.repository.close()
