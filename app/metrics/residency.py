"""The families of models coming and going under a memory budget, and of the cores their
workers share: loads, their duration, waits, refusals, evictions, memory, compute threads."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.batching.cores import CoreShares

LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ResidencyMetrics:
    """Registered on the server's registry; the repository tells it of loads and evictions
    (app.repository.residency.ResidencyObserver)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.model_loads = Counter(
            "batchserve_model_loads",
            "Model loads by reason: startup, request (a request for a model not in memory), "
            "explicit (the repository API), reload (its files changed).",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.model_load_duration = Histogram(
            "batchserve_model_load_duration_seconds",
            "Time a model's load took: phase=total (sessions, tuning or its cache, warm-up) "
            "and phase=warmup (its share spent warming up).",
            ["model", "phase"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_load_waits = Counter(
            "batchserve_model_load_waits",
            "Requests that found their model not in memory and waited for its load.",
            ["model"], registry=r,
        )  # fmt: skip
        self.model_load_refusals = Counter(
            "batchserve_model_load_refusals",
            "Requests answered 503 because the memory budget had no room to load their model "
            "(what holds it is pinned or in use).",
            ["model"], registry=r,
        )  # fmt: skip
        self.model_evictions = Counter(
            "batchserve_model_evictions",
            "Models unloaded to make room under the memory budget.",
            ["model"], registry=r,
        )  # fmt: skip
        self.memory_budget = Gauge(
            "batchserve_model_memory_budget_bytes",
            "The memory loaded models may take: BATCHSERVE_MODEL_MEMORY, else all this "
            "process may use (its cgroup's limit, or the machine's memory).",
            registry=r,
        )  # fmt: skip
        self.memory_resident = Gauge(
            "batchserve_model_memory_resident_bytes",
            "What the loaded models hold, as measured when each loaded.",
            registry=r,
        )  # fmt: skip
        self.compute_cores = Gauge(
            "batchserve_compute_cores",
            "Cores this process may use, which the CPU workers of all models share unless "
            "BATCHSERVE_SHARE_CORES is off.",
            registry=r,
        )  # fmt: skip
        self.compute_threads_busy = Gauge(
            "batchserve_compute_threads_busy",
            "Compute threads running CPU batches now, over all models (at most the cores "
            "while they are shared).",
            registry=r,
        )  # fmt: skip
        self.compute_threads_peak = Gauge(
            "batchserve_compute_threads_peak",
            "The most compute threads that ran CPU batches at once since the server started.",
            registry=r,
        )  # fmt: skip

    def watch_cores(self, cores: CoreShares) -> None:
        """Export the shared cores, and how many threads run batches now and at most."""
        self.compute_cores.set(cores.cores)
        self.compute_threads_busy.set_function(lambda: cores.busy)
        self.compute_threads_peak.set_function(lambda: cores.peak)

    def watch_memory(self, *, budget: int, resident: Callable[[], int]) -> None:
        """Export the memory budget, and what the loaded models hold as `resident()` says."""
        self.memory_budget.set(budget)
        self.memory_resident.set_function(resident)

    # The repository's ResidencyObserver.
    def model_known(self, model: str) -> None:
        """Start the model's counters at zero, so that rate() sees its first event."""
        self.model_evictions.labels(model)
        self.model_load_waits.labels(model)
        self.model_load_refusals.labels(model)

    def model_loaded(self, model: str, reason: str, *, seconds: float, warmup_s: float) -> None:
        self.model_loads.labels(model, reason).inc()
        self.model_load_duration.labels(model, "total").observe(seconds)
        self.model_load_duration.labels(model, "warmup").observe(warmup_s)

    def model_evicted(self, model: str) -> None:
        self.model_evictions.labels(model).inc()

    def load_waited(self, model: str) -> None:
        self.model_load_waits.labels(model).inc()

    def load_refused(self, model: str) -> None:
        self.model_load_refusals.labels(model).inc()
