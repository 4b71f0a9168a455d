"""The workers of one model version, made from config.toml's `[[instances]]` lines.

A line becomes `count` workers on each of its devices (one for "cpu" or "cuda:N", each GPU
listed or visible for "cuda" with `gpus` or "cuda:*"), with its provider and options; each
worker has a session of its own, except that one-thread CPU workers of a line share one
(OnnxInstance.shareable), so that their count does not multiply the weights in memory. Where
the device or provider is missing, the load fails saying what to install, unless the line
allows `fallback = "cpu"`: then the worker runs on the CPU and a warning says what was asked
and what was got.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from app.cpuinfo import cpu_identity
from app.errors import ModelLoadError
from app.repository.config import InstanceConfig, ModelConfig, TensorrtConfig
from app.runtime import InstanceOptions, OnnxInstance
from app.runtime.providers import to_option_strings, visible_gpus
from app.tuning.cache import file_sha256

log = logging.getLogger(__name__)


def build_instances(
    model: str,
    version: int,
    model_path: Path,
    config: ModelConfig,
    gpus: Callable[[], list[int]] = visible_gpus,
    *,
    optimized_dir: Path | None = None,
) -> list[OnnxInstance]:
    """Create every worker's session; `gpus` lists the GPUs "cuda:*" expands to; CPU
    sessions keep the graph ONNX Runtime optimized under `optimized_dir`, when given."""
    model_dir = model_path.parent.parent
    kept = optimized_graph_path(optimized_dir, model_path) if optimized_dir else None
    made: list[tuple[OnnxInstance, str | None]] = []  # with why it is not where it was asked
    for number, line in enumerate(config.instances):
        options = instance_options(line, number, model, version, model_dir, config)
        options = dataclasses.replace(options, optimized_model=kept)
        devices = line.devices(gpus)
        unmet: str | None = None
        if not devices:
            unmet = f'device = "{line.device}" found no GPU here ({_gpu_census()})'
            if not options.fallback_cpu:
                raise ModelLoadError(f"instances.{number}: {unmet}")
            devices = ["cpu"]
        for device in devices:
            first: OnnxInstance | None = None
            for _ in range(line.count):
                if first is not None and first.shareable:
                    instance = first.sharing_session()  # one copy of the weights for all
                else:
                    instance = first = OnnxInstance(
                        model_path, device, threads=line.resolved_threads(), index=0,
                        options=options,
                    )  # fmt: skip
                if unmet is not None:
                    instance.requested, instance.fallback_reason = line.device, unmet
                made.append((instance, instance.fallback_reason))
    instances = [instance for instance, _ in made]
    _number(instances)
    fell_back: dict[tuple[str, str], list[str]] = {}
    for instance, reason in made:
        if reason is not None:
            fell_back.setdefault((instance.requested, reason), []).append(instance.label)
    for (requested, reason), labels in fell_back.items():
        log.warning(
            'model %s v%d: %s %s on the CPU instead of %s, as fallback = "cpu" allows: %s',
            model, version, ", ".join(labels), "runs" if len(labels) == 1 else "run",
            requested, reason,
        )  # fmt: skip
    return instances


def optimized_graph_path(folder: Path, model_path: Path) -> Path:
    """Where `model_path`'s optimized graph is kept: named by the model file's contents,
    the ONNX Runtime version and this CPU, since the optimizer's choices depend on all
    three (app.runtime.optimized)."""
    runtime = hashlib.sha256(f"{ort.__version__} {cpu_identity()}".encode()).hexdigest()
    return folder / f"{file_sha256(model_path)[:40]}-{runtime[:12]}.onnx"


def _number(instances: list[OnnxInstance]) -> None:
    """Label workers `device/k`, k counting per device where they really run."""
    seen: Counter[str] = Counter()
    for instance in instances:
        instance.label = f"{instance.device}/{seen[instance.device]}"
        seen[instance.device] += 1


def _gpu_census() -> str:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = "NVML counts none" if listed is None else f"CUDA_VISIBLE_DEVICES={listed!r}"
    return f"{where}; is the NVIDIA driver installed and the GPU passed to this container?"


def instance_options(
    line: InstanceConfig,
    number: int,
    model: str,
    version: int,
    model_dir: Path,
    config: ModelConfig,
) -> InstanceOptions:
    """One `[[instances]]` line's provider, options and fixed batch sizes, resolved."""
    provider_options = dict(line.provider_options)
    if line.tensorrt is not None:
        cache = tensorrt_cache_dir(line.tensorrt, number, model, version, model_dir)
        provider_options = {**line.tensorrt.provider_options(cache), **provider_options}
    graphs = line.cuda is not None and line.cuda.enable_cuda_graph
    return InstanceOptions(
        provider=line.execution_provider,
        provider_options=to_option_strings(provider_options),
        cuda_options=to_option_strings(line.cuda.provider_options() if line.cuda else {}),
        fallback_cpu=line.fallback == "cpu",
        fixed_batch_sizes=tuple(config.batching.preferred_batch_sizes) if graphs else (),
        spinning=line.spinning,
        low_load_only=line.low_load_only,
    )


def tensorrt_cache_dir(
    settings: TensorrtConfig, number: int, model: str, version: int, model_dir: Path
) -> Path | None:
    """The folder TensorRT keeps engines (and timing caches) in, created and checked
    writable now, so a read-only path fails the load rather than every later build."""
    if not settings.caches:
        return None
    if settings.engine_cache_dir is None:
        path = Path(tempfile.gettempdir()) / "batchserve-tensorrt" / model / str(version)
    else:
        path = Path(settings.engine_cache_dir)
        if not path.is_absolute():
            path = model_dir / path
    key = f"instances.{number}.tensorrt.engine_cache_dir"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"{key}: cannot create {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ModelLoadError(f"{key}: {path} is not writable; name a writable folder")
    return path
