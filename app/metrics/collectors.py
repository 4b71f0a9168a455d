"""Gauges read at scrape time from the server's own state, so the hot path pays nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: A model's states; "unloaded": on request, so no alert should page anyone for it.
STATES = ("loading", "ready", "failed", "unloaded")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker of a model version: where it runs, on which provider, and what its
    config asked for (they differ when it fell back to the CPU)."""

    worker: str
    device: str
    provider: str
    requested: str


@dataclass(frozen=True, slots=True)
class VersionGauges:
    """What one model version looks like right now."""

    model: str
    version: str
    state: str  # one of STATES
    queue_depth: int
    inflight: int
    queue_bytes: int = 0
    workers: tuple[WorkerInfo, ...] = ()
    #: Where its layout came from and what it is (app.tuning.result.Tuning), if known.
    tuning: TuningInfo | None = None
    #: What its load added to the process's resident memory, if measured.
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TuningInfo:
    source: str
    layout: str
    max_batch_size: str
    preferred_batch_sizes: str


class StateCollector(Collector):
    """Exports batchserve_queue_depth, batchserve_queue_bytes, batchserve_inflight_requests,
    batchserve_model_state, batchserve_worker_info, batchserve_tuning_info and
    batchserve_model_memory_bytes."""

    def __init__(self, read: Callable[[], Iterable[VersionGauges]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version"]
        depth = GaugeMetricFamily(
            "batchserve_queue_depth", "Requests waiting in the queue.", labels=labels
        )
        queued_bytes = GaugeMetricFamily(
            "batchserve_queue_bytes",
            "Bytes of input tensors waiting in the queue (bounded by max_queue_bytes).",
            labels=labels,
        )
        inflight = GaugeMetricFamily(
            "batchserve_inflight_requests",
            "Requests received and not yet answered (queued or computing).",
            labels=labels,
        )
        state = GaugeMetricFamily(
            "batchserve_model_state",
            "1 for the state each model version is in (loading, ready, failed, unloaded on "
            "request), else 0.",
            labels=[*labels, "state"],
        )
        workers = GaugeMetricFamily(
            "batchserve_worker_info",
            "1 per worker: the device and ONNX Runtime provider it really runs on, and the "
            "device its config asked for (they differ when it fell back to the CPU).",
            labels=[*labels, "worker", "device", "provider", "requested"],
        )
        tuning = GaugeMetricFamily(
            "batchserve_tuning_info",
            "1 per model version: where its instance layout and batch sizes came from "
            "(config, off, tuned at this load, cache, failed) and what they are.",
            labels=[*labels, "source", "layout", "max_batch_size", "preferred_batch_sizes"],
        )
        memory = GaugeMetricFamily(
            "batchserve_model_memory_bytes",
            "What each loaded model version added to the server's memory when it loaded "
            "and warmed up (device=cpu: the process's resident set).",
            labels=[*labels, "device"],
        )
        for row in self._read():
            values = [row.model, row.version]
            depth.add_metric(values, row.queue_depth)
            queued_bytes.add_metric(values, row.queue_bytes)
            inflight.add_metric(values, row.inflight)
            for name in STATES:
                state.add_metric([*values, name], 1.0 if row.state == name else 0.0)
            for w in row.workers:
                workers.add_metric([*values, w.worker, w.device, w.provider, w.requested], 1.0)
            if row.memory_bytes is not None:
                memory.add_metric([*values, "cpu"], row.memory_bytes)
            if row.tuning is not None:
                t = row.tuning
                tuning.add_metric(
                    [*values, t.source, t.layout, t.max_batch_size, t.preferred_batch_sizes], 1.0
                )
        yield depth
        yield queued_bytes
        yield inflight
        yield state
        yield workers
        yield tuning
        yield memory
