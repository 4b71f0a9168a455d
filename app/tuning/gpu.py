"""Where tuning at load measures: the first visible GPU when ONNX Runtime can run CUDA on
it, else the CPU; and the layouts it compares there.

A bare model on a machine with a GPU is served on every visible GPU, as Triton places a
model without an instance group; the count per GPU (one or two sessions: a second one
overlaps one batch's copies with the other's compute) and the batch sizes are measured on
the first, and the result holds for the others (a node's GPUs are alike, and the cache key
names the model and count of them). ONNX Runtime falls back to the CPU silently, so the
probe session's providers decide, not the package.
"""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

from app.runtime.providers import CUDA, visible_gpus
from app.tuning.points import Layout

log = logging.getLogger(__name__)

#: Sessions per GPU that tuning compares.
GPU_COUNTS = (1, 2)


def tuning_device() -> str:
    """ "cuda:0" where a GPU is visible and this ONNX Runtime has CUDA, else "cpu" (the
    probe session in app.tuning.at_load still checks that CUDA really runs)."""
    if not visible_gpus() or CUDA not in ort.get_available_providers():
        return "cpu"
    return "cuda:0"


def gpu_layouts(cores: int) -> tuple[Layout, ...]:
    """One or two sessions per GPU, the cores shared among them as the server's default
    threads are (they run only the operators CUDA does not take)."""
    return tuple(Layout(count, max(1, cores // count)) for count in GPU_COUNTS)


def gpu_identity() -> str:
    """What a cache entry measured on: the visible GPUs' count and the first one's name
    (NVML's, for the GPU CUDA numbers 0 here), e.g. "2 x NVIDIA H100 80GB HBM3"."""
    gpus = visible_gpus()
    return f"{len(gpus)} x {_first_gpu_name()}"


def _first_gpu_name() -> str:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    index = int(listed) if listed.isdigit() else 0
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # no NVML, or a UUID in CUDA_VISIBLE_DEVICES
        log.debug("GPU name unknown: %s", exc)
        return "unknown GPU"
