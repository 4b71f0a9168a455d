"""The server's state shared by the API routers: settings, repository, metrics, readiness."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator

from app.batching import BatchObserver
from app.batching.cores import CoreShares
from app.cores import available_cores
from app.metrics import (
    ModelMetrics,
    NoMetrics,
    ServerMetrics,
    TuningInfo,
    VersionGauges,
    WorkerInfo,
)
from app.repository import LoadedVersion, ModelRepository, ModelState, ServingDefaults
from app.repository.budget import memory_limit_bytes, parse_memory_budget
from app.repository.poller import RepositoryPoller
from app.repository.residency import CostBook, ResidencySettings
from app.repository.state import UNLOADED, ModelEntry
from app.settings import Settings
from app.tuning.at_load import TuneSettings
from app.tuning.cache import default_cache_dir

log = logging.getLogger("batchserve")

_STATE_NAMES = {
    ModelState.LOADING: "loading",
    ModelState.READY: "ready",
    ModelState.UNAVAILABLE: "failed",
}


class InferenceService:
    """Owns the model repository and metrics for the lifetime of the app (main.create_app)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics(settings.latency_buckets)
        #: The cores every model's CPU workers share (or only count, when they do not).
        self.cores = CoreShares(available_cores(), share=settings.share_cores)
        self.repository = ModelRepository(
            settings.model_repository,
            ServingDefaults(
                max_queue_size=settings.default_max_queue_size,
                max_queue_bytes=settings.default_max_queue_bytes,
                timeout_ms=settings.default_timeout_ms,
                max_image_pixels=settings.max_image_pixels,
                tuning=TuneSettings(
                    enabled=settings.autotune,
                    budget_s=settings.autotune_seconds,
                    cache_dir=settings.cache_dir,
                ),
                cores=self.cores,
                optimized_dir=(settings.cache_dir or default_cache_dir()) / "optimized",
            ),
            observer_factory=self._observer,
            on_version_gone=self.metrics.forget,
            residency=residency_settings(settings),
            residency_observer=self.metrics.residency if settings.metrics else None,
            costs=CostBook(settings.cache_dir or default_cache_dir()),
        )
        self.metrics.watch_state(self._version_gauges)
        self.metrics.residency.watch_cores(self.cores)
        self.metrics.residency.watch_memory(
            budget=self.repository.budget_bytes or memory_limit_bytes(),
            resident=self.repository.resident_bytes,
        )
        self._no_metrics = NoMetrics()
        #: Set once the startup load has finished, whatever failed in it.
        self.loaded = asyncio.Event()
        self.draining = False
        self.startup_error: str | None = None
        #: Where gRPC listens (grpc://host:port), when it does.
        self.grpc_url: str | None = None
        self._drain_hooks: list[Callable[[], None]] = []
        self._poller: RepositoryPoller | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the repository; the server stays live (not ready) while this runs."""
        try:
            await self.repository.load_all()
            if self.settings.repository_poll_s is not None:
                self._poller = RepositoryPoller(self.repository, self.settings.repository_poll_s)
                await self._poller.start()
        except Exception as exc:
            self.startup_error = str(exc)
            log.error("could not load the model repository: %s", exc)
        finally:
            self.loaded.set()

    def begin_drain(self) -> None:
        """Stop taking work: readiness 503, new inference 503, batchers serve what is queued
        without waiting for fuller batches."""
        self.draining = True
        if self._poller is not None:
            self._poller.cancel()
        self.repository.begin_drain()
        for hook in self._drain_hooks:
            hook()

    def on_drain(self, hook: Callable[[], None]) -> None:
        """Call `hook` (on the loop) when draining begins."""
        self._drain_hooks.append(hook)

    async def close(self) -> None:
        self.draining = True
        if self._poller is not None:
            await self._poller.stop()
        await self.repository.close()

    # -- readiness ------------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if self.draining:
            return "server is shutting down"
        if not self.loaded.is_set():
            return "models are still loading"
        if self.startup_error:
            return self.startup_error
        if self.settings.strict_readiness and not self.repository.all_ready():
            failed = self.repository.not_ready()
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

    # -- metrics --------------------------------------------------------------------------

    def _observer(self, model: str, version: int) -> BatchObserver | None:
        return self.metrics.for_version(model, version) if self.settings.metrics else None

    def recorder(self, model: str, version: int) -> ModelMetrics | NoMetrics:
        """Where the API counts a request's outcome and duration."""
        if not self.settings.metrics:
            return self._no_metrics
        return self.metrics.for_version(model, version)

    def _version_gauges(self) -> Iterator[VersionGauges]:
        for entry in list(self.repository.models.values()):
            state = _state_name(entry)
            if not entry.versions:
                yield VersionGauges(entry.name, "", state, 0, 0)
            for version, loaded in list(entry.versions.items()):
                metrics = self.metrics.known(entry.name, version)
                yield VersionGauges(
                    entry.name,
                    str(version),
                    state,
                    metrics.depth if metrics else 0,
                    metrics.inflight if metrics else 0,
                    loaded.batcher.queued_bytes,
                    tuple(
                        WorkerInfo(i.label, i.device, i.providers[0], i.requested)
                        for i in loaded.instances
                    ),
                    _tuning_info(loaded),
                    loaded.memory_bytes,
                )


def _state_name(entry: ModelEntry) -> str:
    """As batchserve_model_state says it: a model out of memory on request or to fit the
    budget is "unloaded" (nothing to page anyone about), else its state."""
    if entry.reason == UNLOADED or (entry.on_demand and entry.state is ModelState.UNAVAILABLE):
        return "unloaded"
    return _STATE_NAMES[entry.state]


def residency_settings(settings: Settings) -> ResidencySettings:
    """The memory budget and the models kept in memory, from the server's settings."""
    budget = settings.model_memory
    return ResidencySettings(
        budget_bytes=parse_memory_budget(budget) if budget else None,
        preload=frozenset(settings.preload),
        max_concurrent_loads=settings.max_concurrent_loads,
        room_wait_s=settings.model_room_wait_s,
    )


def _tuning_info(loaded: LoadedVersion) -> TuningInfo | None:
    tuning = loaded.tuning
    if tuning is None:
        return None
    policy = loaded.batcher.policy
    return TuningInfo(
        source=tuning.source,
        layout=_layout(loaded),
        max_batch_size=str(loaded.max_batch_size),
        preferred_batch_sizes=",".join(map(str, policy.preferred_batch_sizes)),
    )


def _layout(loaded: LoadedVersion) -> str:
    """`2x1` (count x threads) for workers alike on the CPU, else per device and threads,
    low-load-only workers marked: `2x1 + low-load 1x2`, `cuda:0 1x2 + cpu 2x1`."""
    groups = Counter((i.device, i.threads, i.low_load_only) for i in loaded.instances)
    on_cpu_only = {device for device, _, _ in groups} == {"cpu"}
    parts = []
    for (device, threads, low_load_only), count in groups.items():
        part = f"{count}x{threads}" if on_cpu_only else f"{device} {count}x{threads}"
        parts.append(f"low-load {part}" if low_load_only else part)
    return " + ".join(parts)
