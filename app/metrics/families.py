"""The metric families (DESIGN.md "Metrics"), one registry per server.

Names follow Prometheus conventions: base units, `_total` counters, histograms for every
latency so percentiles aggregate across replicas. Label children are bound once per model
version (`ModelMetrics`), not looked up per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from app.batching import BatchObserver

#: Inference latencies: 100 us to 60 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

OUTCOMES = ("success", "invalid", "rejected", "timeout", "cancelled", "error")


class ServerMetrics:
    """All families of one server, registered on a registry of its own."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double the output for no use here
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        mv = ["model", "version"]
        r = self.registry
        self.requests = Counter(
            "batchserve_requests", "Inference requests by outcome.", [*mv, "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "batchserve_request_duration_seconds",
            "Server-side time from request received to response ready.",
            mv, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "batchserve_queue_duration_seconds",
            "Time a request waited in the queue before its batch started.",
            mv, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "batchserve_compute_duration_seconds",
            "Time one batch spent executing on its device.",
            [*mv, "device"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "batchserve_batch_size",
            "Samples per execution.",
            [*mv, "device"], buckets=BATCH_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.inferences = Counter(
            "batchserve_inferences", "Samples inferred (batch axis).", [*mv, "device"], registry=r
        )
        self.executions = Counter(
            "batchserve_executions", "Batches executed.", [*mv, "device"], registry=r
        )
        self.queue_depth = Gauge(
            "batchserve_queue_depth", "Requests waiting in the queue.", mv, registry=r
        )
        self.worker_busy = Counter(
            "batchserve_worker_busy_seconds",
            "Seconds each worker spent executing; rate() is its utilization.",
            [*mv, "device", "instance"], registry=r,
        )  # fmt: skip
        self._models: dict[tuple[str, int], ModelMetrics] = {}

    def for_version(self, model: str, version: int) -> ModelMetrics:
        """The bound children of one model version (created on first use)."""
        key = (model, version)
        metrics = self._models.get(key)
        if metrics is None:
            metrics = self._models[key] = ModelMetrics(self, model, str(version))
        return metrics


class ModelMetrics(BatchObserver):
    """Metrics of one model version; also the batcher's observer for it."""

    def __init__(self, server: ServerMetrics, model: str, version: str) -> None:
        self._server = server
        self._labels = (model, version)
        self._outcomes = {o: server.requests.labels(model, version, o) for o in OUTCOMES}
        self._request_duration = server.request_duration.labels(model, version)
        self._queue_duration = server.queue_duration.labels(model, version)
        self._queue_depth = server.queue_depth.labels(model, version)

    def request_done(self, outcome: str, duration_s: float | None = None) -> None:
        self._outcomes[outcome].inc()
        if duration_s is not None:
            self._request_duration.observe(duration_s)

    # BatchObserver

    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def batch_executed(
        self,
        runner: str,
        device: str,
        samples: int,
        compute_s: float,
        queue_waits_s: Sequence[float],
        failed: bool,
    ) -> None:
        s = self._server
        labels = (*self._labels, device)
        for wait in queue_waits_s:
            self._queue_duration.observe(wait)
        s.worker_busy.labels(*labels, runner).inc(compute_s)
        s.executions.labels(*labels).inc()
        if not failed:
            s.compute_duration.labels(*labels).observe(compute_s)
            s.batch_size.labels(*labels).observe(samples)
            s.inferences.labels(*labels).inc(samples)
