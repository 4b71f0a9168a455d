"""Triton's model configuration (ModelConfig, as its JSON) of a loaded version.

perf_analyzer and Model Analyzer ask for it before they send anything: the tensors with
Triton's type names and the batch axis left out of `dims` when the model batches, the
dynamic batcher's settings, and where the instances run. The same content serves REST's
`/config` and gRPC's ModelConfig.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.repository.sections import VersionPolicy
from app.repository.state import LoadedVersion
from app.runtime.providers import parse_cuda_device
from app.tensors import TensorSpec, triton_data_type

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


def model_config(loaded: LoadedVersion) -> dict[str, Any]:
    """The ModelConfig JSON of `loaded`, as Triton's `GET /v2/models/{m}/config` answers."""
    batching = loaded.max_batch_size > 0
    # With a text or image stage a request sends either the raw text or image, or the
    # model's own tensors: each set is optional, or perf_analyzer demands both.
    staged = loaded.text is not None or loaded.image is not None
    config: dict[str, Any] = {
        "name": loaded.model,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": _version_policy(loaded.config.version_policy),
        "max_batch_size": loaded.max_batch_size,
        "input": [_input(spec, batching, optional=staged) for spec in loaded.request_inputs],
        "output": [
            {
                "name": spec.name,
                "data_type": triton_data_type(spec.datatype),
                "dims": _dims(spec, batching),
                "label_filename": loaded.config.labels.get(spec.name, ""),
                "is_shape_tensor": False,
            }
            for spec in loaded.outputs
        ],
        "batch_input": [],
        "batch_output": [],
        "instance_group": _instance_groups(loaded),
        "default_model_filename": "model.onnx",
        "parameters": {},
        "model_warmup": [],
    }
    if batching:
        config["dynamic_batching"] = _dynamic_batching(loaded)
    return config


def _input(spec: TensorSpec, batching: bool, *, optional: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": spec.name,
        "data_type": triton_data_type(spec.datatype),
        "format": "FORMAT_NONE",
        "dims": _dims(spec, batching),
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": optional,
    }
    if batching and spec.one_per_sample:
        # Triton allows no empty dims: one element per sample is dims [1], reshaped to []
        # (perf_analyzer refuses an input whose shape it cannot build).
        entry["dims"], entry["reshape"] = [1], {"shape": []}
    return entry


def _dims(spec: TensorSpec, batching: bool) -> list[int]:
    return list(spec.shape[1:] if batching else spec.shape)


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": sorted(policy.specific)}}
    return {"latest": {"num_versions": policy.latest or 1}}


def _dynamic_batching(loaded: LoadedVersion) -> dict[str, Any]:
    policy = loaded.batcher.policy
    timeout_s = loaded.default_timeout_s
    levels = policy.priority_levels if policy.priority_levels > 1 else 0
    return {
        "preferred_batch_size": list(policy.preferred_batch_sizes),
        "max_queue_delay_microseconds": round(policy.max_queue_delay_s * 1_000_000),
        "preserve_ordering": False,
        "priority_levels": levels,
        "default_priority_level": policy.default_priority if levels else 0,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": round((timeout_s or 0) * 1_000_000),
            "allow_timeout_override": True,
            "max_queue_size": policy.max_queue_size,
        },
        "priority_queue_policy": {},
    }


def _instance_groups(loaded: LoadedVersion) -> list[dict[str, Any]]:
    """One KIND_CPU group for the CPU workers; KIND_GPU groups of the GPUs that hold the
    same number of workers (Triton's `count` is per GPU)."""
    cpu = 0
    per_gpu: Counter[int] = Counter()
    for instance in loaded.instances:
        gpu = parse_cuda_device(instance.device)
        if gpu is None:
            cpu += 1
        else:
            per_gpu[gpu] += 1
    groups: list[dict[str, Any]] = []
    if cpu:
        groups.append(_group(loaded.model, len(groups), "KIND_CPU", cpu, []))
    for count in sorted(set(per_gpu.values())):
        gpus = sorted(gpu for gpu, n in per_gpu.items() if n == count)
        groups.append(_group(loaded.model, len(groups), "KIND_GPU", count, gpus))
    return groups


def _group(model: str, index: int, kind: str, count: int, gpus: list[int]) -> dict[str, Any]:
    return {
        "name": f"{model}_{index}",
        "kind": kind,
        "count": count,
        "gpus": gpus,
        "secondary_devices": [],
        "profile": [],
        "passive": False,
        "host_policy": "",
    }
