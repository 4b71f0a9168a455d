"""ONNX Runtime execution providers: which package brings each, the provider list a session is
created with, and why an NVIDIA GPU is not usable here.

ONNX Runtime falls back to the CPU silently when a provider cannot be loaded (it only logs),
so the runtime checks the providers a session really got; this module supplies the words for
the message that follows: what was asked, what this build has, and what to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TENSORRT_RTX = "NvTensorRTRTXExecutionProvider"

#: Providers that run on the NVIDIA GPU named by `device = "cuda:N"` (they take its device_id).
NVIDIA_PROVIDERS = (CUDA, TENSORRT, TENSORRT_RTX)

_SHARED_MODULE = "; it replaces onnxruntime / onnxruntime-gpu, as they share the onnxruntime module"

#: Where each provider comes from, for the message when this build or machine lacks it.
PACKAGES: dict[str, str] = {
    CUDA: (
        "onnxruntime-gpu (Linux x86-64, Windows) with an NVIDIA GPU and driver and the CUDA "
        "{cuda} and cuDNN 9 libraries it was built for (system-wide, or the nvidia-* pip "
        "packages)"
    ),
    TENSORRT: (
        "onnxruntime-gpu with NVIDIA TensorRT 10 libraries (libnvinfer, e.g. the tensorrt pip "
        "package) on the library path, besides everything CUDAExecutionProvider needs"
    ),
    TENSORRT_RTX: "onnxruntime-ep-nv-tensorrt-rtx (a plugin package for RTX GPUs)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino (Intel CPUs, GPUs, NPUs)" + _SHARED_MODULE,
    "DmlExecutionProvider": "onnxruntime-directml (DirectML, Windows)" + _SHARED_MODULE,
    "CoreMLExecutionProvider": "onnxruntime on macOS, where it is built in",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx (AMD GPUs, ROCm)" + _SHARED_MODULE,
    "QNNExecutionProvider": "onnxruntime-qnn (Qualcomm NPUs)" + _SHARED_MODULE,
    "CANNExecutionProvider": "onnxruntime-cann (Huawei Ascend NPUs)" + _SHARED_MODULE,
    "VitisAIExecutionProvider": "AMD's Ryzen AI software (its onnxruntime build)",
    "DnnlExecutionProvider": "an onnxruntime built with oneDNN (--use_dnnl; not on PyPI)",
    "XnnpackExecutionProvider": "an onnxruntime built with XNNPACK (--use_xnnpack)",
    "ACLExecutionProvider": "an onnxruntime built with the Arm Compute Library (--use_acl)",
    "NnapiExecutionProvider": "onnxruntime for Android (NNAPI)",
    "RknpuExecutionProvider": "an onnxruntime built for Rockchip NPUs (--use_rknpu)",
    "VSINPUExecutionProvider": "an onnxruntime built for VeriSilicon NPUs (--use_vsinpu)",
    "WebGpuExecutionProvider": "an onnxruntime built with WebGPU (--use_webgpu)",
    "AzureExecutionProvider": "an onnxruntime built with --use_azure",
    "JsExecutionProvider": "onnxruntime-web (browsers only)",
    "WebNNExecutionProvider": "onnxruntime-web (browsers only)",
}


def known_providers() -> list[str]:
    """Every provider name ONNX Runtime knows of, whether this build has it or not."""
    return list(ort.get_all_providers())


def package_for(provider: str) -> str:
    """Which package (and what else) brings `provider`."""
    text = PACKAGES.get(provider, "an onnxruntime package or build that includes it")
    return text.replace("{cuda}", _built_cuda_version() or "12/13")


def _built_cuda_version() -> str | None:
    """The CUDA version this onnxruntime-gpu was built for, e.g. '13.0' (None: CPU build)."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    version = getattr(build_and_package_info, "cuda_version", None)
    return str(version) if version else None


def to_option_strings(options: Mapping[str, Any]) -> dict[str, str]:
    """Provider options as ONNX Runtime parses them: strings, booleans as "true"/"false",
    which every provider's parser takes (ONNX Runtime's own str() would give "True", which
    some do not)."""
    return {key: _option_string(value) for key, value in options.items()}


def _option_string(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def provider_chain(
    device: str, provider: str | None, options: Mapping[str, str], cuda_options: Mapping[str, str]
) -> list[tuple[str, dict[str, str]]]:
    """The providers a session on `device` is created with, in order of preference.

    `cuda:N` puts the NVIDIA provider first with device_id N (TensorRT with CUDA behind it,
    for the nodes TensorRT leaves), then the CPU for what no GPU kernel covers; `cpu` puts a
    named provider (OpenVINO, ...) before the CPU provider, or the CPU provider alone.
    """
    gpu = parse_cuda_device(device)
    if gpu is None:
        if provider is None or provider == CPU:
            return [(CPU, {})]
        return [(provider, dict(options)), (CPU, {})]
    primary = provider or CUDA
    chain: list[tuple[str, dict[str, str]]] = []
    if primary == CUDA:
        chain.append((CUDA, {"device_id": str(gpu), **cuda_options, **options}))
    else:
        chain.append((primary, {"device_id": str(gpu), **options}))
        if primary == TENSORRT:
            chain.append((CUDA, {"device_id": str(gpu), **cuda_options}))
    chain.append((CPU, {}))
    return chain


def parse_cuda_device(device: str) -> int | None:
    """N for "cuda:N", None for "cpu"."""
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None


# -- NVIDIA GPUs ---------------------------------------------------------------------------

_preloaded = False
_preload_lock = threading.Lock()


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries from the nvidia-* pip packages, once per process.

    onnxruntime-gpu finds system-wide CUDA on its own; the pip packages (where torch or a
    slim image puts CUDA) are only found through onnxruntime.preload_dlls(), which prints
    what it cannot load: that goes to the debug log, and the load's own check says what is
    missing."""
    global _preloaded
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                preload()
        except Exception as exc:  # a broken nvidia package must not stop CPU instances
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
        if printed.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


def missing_cuda_libraries(tensorrt: bool = False) -> list[str]:
    """The libraries CUDAExecutionProvider (and TensorRT's, with `tensorrt`) needs that
    cannot be loaded here, each with what it is (the driver's libcuda first). Empty when
    all load: then the GPU itself is missing or refused, and ONNX Runtime's log says why."""
    cuda = (_built_cuda_version() or "").split(".")[0]
    wanted = [("libcuda.so.1", "the NVIDIA driver")]
    if cuda:
        wanted += [
            (f"libcudart.so.{cuda}", f"CUDA {cuda} runtime"),
            (f"libcublasLt.so.{cuda}", f"cuBLAS {cuda}"),
        ]
    wanted.append(("libcudnn.so.9", "cuDNN 9"))
    if tensorrt:
        wanted.append(("libnvinfer.so.10", "TensorRT 10"))
    missing = []
    for name, what in wanted:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(f"{name} ({what})")
    return missing


def visible_gpus() -> list[int]:
    """Indexes (as CUDA numbers them in this process) of the GPUs `cuda:*` expands to.

    CUDA_VISIBLE_DEVICES, when set, decides (CUDA renumbers the GPUs it lists 0..n-1 and
    stops at the first entry that names no GPU); otherwise NVML's count of GPUs. Without
    the NVIDIA driver: none."""
    total = _nvml_device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(total))
    count = 0
    for entry in listed.split(","):
        entry = entry.strip()
        if entry.isdigit():
            if int(entry) >= total:
                break
        elif not entry.startswith(("GPU-", "MIG-")):
            break
        count += 1
    return list(range(count))


def _nvml_device_count() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable GPU
        return 0
