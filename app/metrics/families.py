"""The metric families (DESIGN.md "Metrics"), one registry per server.

Names follow Prometheus conventions: base units, `_total` counters, histograms for every
latency so percentiles aggregate across replicas. Label children are bound once per model
version and device (`ModelMetrics`), never looked up by name per request. Gauges of current
state (queue depth, in-flight, model state) are read at scrape time (collectors.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

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

from app.batching import BatchObserver, BatchReport
from app.batching.latency import MISS_SHARE
from app.metrics.collectors import StateCollector, VersionGauges
from app.metrics.gpu import GpuCollector
from app.metrics.residency import ResidencyMetrics
from app.metrics.statistics import ModelStatistics

#: Inference latencies: 100 us to 60 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

OUTCOMES = ("success", "invalid", "rejected", "timeout", "cancelled", "error")
PROTOCOLS = ("http", "grpc")


class ServerMetrics:
    """All families of one server, registered on a registry of its own."""

    def __init__(self, latency_buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        gpu = GpuCollector.create()
        if gpu is not None:
            r.register(gpu)
        mv = ["model", "version"]
        mvd = [*mv, "device"]
        buckets = tuple(latency_buckets)
        self.requests = Counter(
            "batchserve_requests",
            "Inference requests by transport (protocol = http | grpc) and outcome; each "
            "request counts once.",
            [*mv, "protocol", "outcome"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "batchserve_request_duration_seconds",
            "Server-side time from request received to response ready, by transport.",
            [*mv, "protocol"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "batchserve_queue_duration_seconds",
            "Time a request waited in the queue before its batch started.",
            mv, buckets=buckets, registry=r,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "batchserve_stage_duration_seconds",
            "Time a request spent in a pre-processing stage before the model's queue "
            "(stage=tokenize: waiting for and running the tokenizer).",
            [*mv, "stage"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "batchserve_compute_duration_seconds",
            "Time one batch spent executing on its device.",
            mvd, buckets=buckets, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "batchserve_batch_size",
            "Samples per execution.",
            mvd, buckets=BATCH_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.inferences = Counter(
            "batchserve_inferences", "Samples inferred (batch axis).", mvd, registry=r
        )
        self.executions = Counter("batchserve_executions", "Batches executed.", mvd, registry=r)
        self.padding = Counter(
            "batchserve_padding_samples",
            "Samples the batcher added as padding (computed, never returned).",
            mvd, registry=r,
        )  # fmt: skip
        self.positions = Counter(
            "batchserve_sequence_positions",
            "Positions along variable-length axes (tokens) computed: kind=request for the "
            "requests' own, kind=padding for padding added to batch them (cut away after).",
            [*mvd, "kind"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "batchserve_batcher_decisions",
            "Latency-target batching: batches taken at once (now) or after waiting for a "
            "fuller one (waited), requests refused on arrival to keep the target (shed), and "
            "requests refused when their turn came too late to make it (late).",
            [*mv, "decision"], registry=r,
        )  # fmt: skip
        self.latency_model = Gauge(
            "batchserve_latency_model_seconds",
            "Latency-target batching: each worker's fitted batch time t(n) = fixed + "
            "per_sample * n (term = fixed | per_sample).",
            [*mv, "worker", "term"], registry=r,
        )  # fmt: skip
        self.shed_threshold = Gauge(
            "batchserve_shed_threshold_seconds",
            "Latency-target batching: requests expected to take longer than this are refused "
            f"(429); steered so that about {MISS_SHARE:.1%} of the answered ones miss the "
            "target.",
            mv, registry=r,
        )  # fmt: skip
        self.worker_busy = Counter(
            "batchserve_worker_busy_seconds",
            "Seconds each worker spent executing; rate() is its utilization.",
            [*mvd, "worker"], registry=r,
        )  # fmt: skip
        self.http_refusals = Counter(
            "batchserve_http_refusals",
            "HTTP connections and requests refused or closed by the front's limits, by reason: "
            "header_timeout and body_timeout (408), header_too_large and too_many_headers "
            "(431), url_too_long (414), too_many_connections and body_budget (503), "
            "idle_evicted (an idle connection closed to make room for a new one).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.http_connections = Gauge(
            "batchserve_http_connections", "Open HTTP connections.", registry=r
        )
        #: Loads, evictions, memory and cores (the repository's ResidencyObserver).
        self.residency = ResidencyMetrics(r)
        self._models: dict[tuple[str, int], ModelMetrics] = {}
        #: Every family labelled by model and version first: a version's series to drop.
        self._per_version = (
            self.requests, self.request_duration, self.queue_duration, self.stage_duration,
            self.compute_duration, self.batch_size, self.inferences, self.executions,
            self.padding, self.positions, self.decisions, self.latency_model,
            self.shed_threshold, self.worker_busy,
        )  # fmt: skip

    def watch_state(self, read: Callable[[], Iterable[VersionGauges]]) -> None:
        """Export queue depth, in-flight requests and model state from `read()` at scrape."""
        self.registry.register(StateCollector(read))

    def http_refused(self, reason: str) -> None:
        self.http_refusals.labels(reason).inc()

    def watch_connections(self, read: Callable[[], int]) -> None:
        """Export the open HTTP connections as `read()` says at scrape time."""
        self.http_connections.set_function(read)

    def for_version(self, model: str, version: int) -> ModelMetrics:
        """The bound children of one model version (created on first use)."""
        key = (model, version)
        metrics = self._models.get(key)
        if metrics is None:
            metrics = self._models[key] = ModelMetrics(self, model, str(version))
        return metrics

    def known(self, model: str, version: int) -> ModelMetrics | None:
        return self._models.get((model, version))

    def forget(self, model: str, version: int) -> None:
        """Drop an unloaded version's series and statistics, so that /metrics of a
        long-lived server does not grow with every version it ever served. Loaded again,
        the version starts from zero (Prometheus reads that as a counter reset)."""
        self._models.pop((model, version), None)
        labels = {"model": model, "version": str(version)}
        for family in self._per_version:
            family.remove_by_labels(labels)


class NoMetrics:
    """Stands in for ModelMetrics when metrics are turned off (to measure their cost)."""

    def request_started(self) -> None:
        pass

    def request_done(self, outcome: str, duration_s: float, protocol: str = "http") -> None:
        pass

    def stage_done(self, stage: str, duration_s: float) -> None:
        pass


class _DeviceChildren:
    """The children of one (model, version, device)."""

    __slots__ = (
        "batch_size",
        "compute",
        "executions",
        "inferences",
        "padding",
        "padding_positions",
        "positions",
    )

    def __init__(self, server: ServerMetrics, labels: tuple[str, str, str]) -> None:
        self.compute = server.compute_duration.labels(*labels)
        self.batch_size = server.batch_size.labels(*labels)
        self.inferences = server.inferences.labels(*labels)
        self.executions = server.executions.labels(*labels)
        self.padding = server.padding.labels(*labels)
        self.positions = server.positions.labels(*labels, "request")
        self.padding_positions = server.positions.labels(*labels, "padding")


class ModelMetrics(BatchObserver):
    """Metrics and statistics of one model version; also its batcher's observer."""

    def __init__(self, server: ServerMetrics, model: str, version: str) -> None:
        self._server = server
        self._labels = (model, version)
        self._outcomes = {
            (p, o): server.requests.labels(model, version, p, o)
            for p in PROTOCOLS
            for o in OUTCOMES
        }
        self._request_duration = {
            p: server.request_duration.labels(model, version, p) for p in PROTOCOLS
        }
        self._queue_duration = server.queue_duration.labels(model, version)
        self._stages: dict[str, Histogram] = {}
        self._devices: dict[str, _DeviceChildren] = {}
        self._busy: dict[str, Counter] = {}
        self.statistics = ModelStatistics(model, version)
        self.depth = 0
        self.inflight = 0

    # BatchObserver

    def workers_started(self, workers: Sequence[tuple[str, str]]) -> None:
        """Create every child up front (as 0), so rates see the series before traffic."""
        for instance, device in workers:
            self._device(device)
            self._worker(instance, device)

    def _device(self, device: str) -> _DeviceChildren:
        children = self._devices.get(device)
        if children is None:
            children = self._devices[device] = _DeviceChildren(
                self._server, (*self._labels, device)
            )
        return children

    def _worker(self, instance: str, device: str) -> Counter:
        busy = self._busy.get(instance)
        if busy is None:
            busy = self._busy[instance] = self._server.worker_busy.labels(
                *self._labels, device, instance
            )
        return busy

    def request_started(self) -> None:
        self.inflight += 1

    def request_done(self, outcome: str, duration_s: float, protocol: str = "http") -> None:
        self.inflight -= 1
        self._outcomes[protocol, outcome].inc()
        self._request_duration[protocol].observe(duration_s)
        if outcome != "cancelled":
            self.statistics.request_done(outcome == "success", duration_s)

    def stage_done(self, stage: str, duration_s: float) -> None:
        child = self._stages.get(stage)
        if child is None:
            child = self._stages[stage] = self._server.stage_duration.labels(*self._labels, stage)
        child.observe(duration_s)

    def queue_depth(self, depth: int) -> None:
        self.depth = depth

    def decided(self, decision: str) -> None:
        self._server.decisions.labels(*self._labels, decision).inc()

    def latency_model(self, worker: str, fixed_s: float, per_sample_s: float) -> None:
        self._server.latency_model.labels(*self._labels, worker, "fixed").set(fixed_s)
        self._server.latency_model.labels(*self._labels, worker, "per_sample").set(per_sample_s)

    def shed_threshold(self, expected_s: float) -> None:
        self._server.shed_threshold.labels(*self._labels).set(expected_s)

    def batch_executed(self, report: BatchReport) -> None:
        device = self._device(report.device)
        busy_s = report.input_s + report.compute_s + report.output_s
        self._worker(report.runner, report.device).inc(busy_s)
        queue = self.statistics.queue
        for wait in report.queue_waits_s:
            self._queue_duration.observe(wait)
            queue.add(wait)
        if not report.succeeded_samples:
            return
        device.executions.inc()
        device.compute.observe(report.compute_s)
        device.batch_size.observe(report.samples)
        device.inferences.inc(report.succeeded_samples)
        if report.padding:
            device.padding.inc(report.padding)
        if report.positions:
            device.positions.inc(report.positions - report.padding_positions)
            device.padding_positions.inc(report.padding_positions)
        self.statistics.batch_executed(
            report.succeeded_samples,
            report.requests,
            report.input_s,
            report.compute_s,
            report.output_s,
        )
