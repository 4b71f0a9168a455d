"""Load one model version: sessions per instance, specs from the graph, warm-up, batcher.

Blocking (ORT session creation and warm-up): call it from a thread, not the event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from app.batching import Batcher, BatchingPolicy, BatchObserver
from app.batching.cores import CoreShares
from app.errors import ModelLoadError
from app.repository.autotune import apply_tuning, tune_version
from app.repository.config import ModelConfig
from app.repository.image import build_image_stage, load_labels
from app.repository.instances import build_instances
from app.repository.model_files import check_model_files
from app.repository.padding import build_padding_plan
from app.repository.samples import load_sample, tuning_samples
from app.repository.state import LoadedVersion
from app.repository.text import build_text_stage
from app.repository.warmup import warm_up
from app.tensors import TensorSpec, fixed_batch_input
from app.tuning.at_load import TuneSettings
from app.tuning.plan import AUTO_MAX_BATCH_SIZE

MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class ServingDefaults:
    """The server's settings for what a model's config leaves unset."""

    max_queue_size: int = 1024
    max_queue_bytes: int | None = None
    timeout_ms: float | None = None
    max_image_pixels: int = 40_000_000
    tuning: TuneSettings = field(default_factory=lambda: TuneSettings(enabled=False))
    #: The machine's cores, which every version's CPU workers share (None: not counted).
    cores: CoreShares | None = None
    #: Where CPU sessions keep the graphs ONNX Runtime optimized (None: not kept).
    optimized_dir: Path | None = None


def resolve_max_batch_size(config: ModelConfig, inputs: tuple[TensorSpec, ...]) -> int:
    """The config's max_batch_size checked against the graph, or the auto-complete default."""
    spec = fixed_batch_input(inputs)
    if config.max_batch_size is None:
        return 0 if spec else AUTO_MAX_BATCH_SIZE
    if config.max_batch_size > 0 and spec:
        raise ModelLoadError(
            f"max_batch_size = {config.max_batch_size} needs a dynamic first (batch) axis, but "
            f"input '{spec.name}' has shape {list(spec.shape)}; set max_batch_size = 0 or "
            "export the model with a dynamic batch axis"
        )
    return config.max_batch_size


def load_version(
    model: str,
    version: int,
    version_dir: Path,
    *,
    config: ModelConfig,
    defaults: ServingDefaults,
    observer: BatchObserver | None = None,
) -> LoadedVersion:
    """Create and warm every instance of one version; the batcher is built but not started."""
    model_path = version_dir / MODEL_FILE
    check_model_files(model_path, version_dir)
    label = f"model {model} v{version}"
    model_dir = version_dir.parent
    tuning = tune_version(
        model_path, config, settings=defaults.tuning, label=label,
        samples=tuning_samples(config, model_dir, max_image_pixels=defaults.max_image_pixels),
    )  # fmt: skip
    config = apply_tuning(tuning, config)
    instances = build_instances(
        model, version, model_path, config, optimized_dir=defaults.optimized_dir
    )
    first = instances[0]
    max_batch_size = resolve_max_batch_size(config, first.inputs)
    batching = config.batching
    policy = BatchingPolicy(
        max_batch_size=max_batch_size,
        max_queue_size=batching.max_queue_size or defaults.max_queue_size,
        max_queue_bytes=batching.max_queue_bytes or defaults.max_queue_bytes,
        max_queue_samples=batching.max_queue_samples,
        padding=build_padding_plan(config.padding, first.inputs, first.outputs, max_batch_size),
        max_queue_delay_s=batching.max_queue_delay_ms / 1000.0,
        latency_target_s=_seconds(batching.latency_target_ms),
        preferred_batch_sizes=tuple(sorted(set(batching.preferred_batch_sizes))),
        priority_levels=batching.priority_levels,
        default_priority=batching.default_priority or batching.priority_levels,
    )
    too_big = [p for p in policy.preferred_batch_sizes if p > max(max_batch_size, 1)]
    if too_big:
        raise ModelLoadError(
            f"batching.preferred_batch_sizes {too_big} exceed max_batch_size {max_batch_size}"
        )
    warming = time.perf_counter()
    warm_up(
        instances,
        label=label,
        sizes=policy.preferred_batch_sizes or (max(max_batch_size, 1),),
        batches=policy.batches,
        sample=load_sample(config.warmup, model_dir, first.inputs),
    )
    warmup_s = time.perf_counter() - warming
    return LoadedVersion(
        model=model,
        version=version,
        config=config,
        max_batch_size=max_batch_size,
        inputs=first.inputs,
        outputs=first.outputs,
        instances=instances,
        batcher=Batcher(
            f"{model}/{version}", policy, instances, observer=observer,
            low_load_only=[i.label for i in instances if i.low_load_only],
            cores=defaults.cores,
        ),
        default_timeout_s=_seconds(batching.default_timeout_ms or defaults.timeout_ms),
        reject_nonfinite=config.reject_nonfinite,
        default_outputs=_default_outputs(config.default_outputs, first.outputs),
        tuning=tuning,
        warmup_s=warmup_s,
        text=build_text_stage(
            config.tokenizer, version_dir.parent, first.inputs, max_batch_size,
            policy.max_queue_size,
        ),
        image=build_image_stage(
            config.image, first.inputs, max_batch_size=max_batch_size,
            max_queue_size=policy.max_queue_size, max_pixels=defaults.max_image_pixels,
            devices=[i.device for i in instances],
        ),
        labels=load_labels(config.labels, version_dir.parent, first.outputs),
    )  # fmt: skip


def _default_outputs(
    names: list[str] | None, outputs: tuple[TensorSpec, ...]
) -> tuple[str, ...] | None:
    if names is None:
        return None
    known = [spec.name for spec in outputs]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ModelLoadError(
            f"default_outputs {names} must name some of the model's outputs {known}"
        )
    return tuple(names)


def _seconds(milliseconds: float | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000.0
