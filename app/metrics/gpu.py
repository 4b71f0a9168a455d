"""GPU utilization and memory per GPU through NVML (nvidia-ml-py), read at scrape time.

Without a GPU (or without the NVIDIA driver) the families are absent, not zero: a dashboard
must not show a 0 % GPU that does not exist. The `gpu` label is NVML's index, which follows
the PCI bus order and ignores CUDA_VISIBLE_DEVICES, so it can differ from the N of a
worker's `cuda:N`; `name` tells models apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def _nvml() -> Any | None:
    """The initialised pynvml module, or None where NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable GPU
        return None
    return pynvml


class GpuCollector(Collector):
    """Exports batchserve_gpu_{utilization_ratio,memory_used_bytes,memory_total_bytes}."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    @classmethod
    def create(cls) -> GpuCollector | None:
        """The collector, or None where NVML works but sees no GPU (a driver without a
        device, as in a container not given one): the families stay absent there too."""
        nvml = _nvml()
        if nvml is None:
            return None
        try:
            if nvml.nvmlDeviceGetCount() == 0:
                return None
        except Exception:
            return None
        return cls(nvml)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._nvml
        labels = ["gpu", "name"]
        utilization = GaugeMetricFamily(
            "batchserve_gpu_utilization_ratio",
            "Fraction of the last sample period the GPU was busy (NVML).",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "batchserve_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=labels
        )
        total = GaugeMetricFamily(
            "batchserve_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=labels
        )
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                values = [str(index), name]
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                utilization.add_metric(values, rates.gpu / 100.0)
                used.add_metric(values, float(memory.used))
                total.add_metric(values, float(memory.total))
        except Exception as exc:  # a GPU that fell off the bus must not break the scrape
            log.warning("NVML query failed: %s", exc)
            return
        yield utilization
        yield used
        yield total
