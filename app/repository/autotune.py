"""Tuning at load: a model whose config leaves its instances unset is profiled before it
reports ready, and served with the layout and batch sizes its device runs fastest.

The measurement and the rule are `batchserve profile`'s (app.profile.measure, recommend),
bounded by a time budget (the layouts taking turns; two passes on a CPU), on the model
directory's real inputs where it has any (app.repository.tuning_inputs; synthetic ones only
when there is nothing else). The
result is cached (app.repository.tuning_cache), so a restart or a second replica on the same
kind of machine loads at once. What the config sets is never overridden; a profile that
fails leaves the model on the defaults it had before, with the reason logged and reported.

Blocking (ORT sessions): run it from the loading thread, never from an event loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.cores import available_cores
from app.cpuinfo import cpu_identity
from app.profile import measure
from app.profile.errors import ProfileError
from app.profile.recommend import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_SEQUENCE_LENGTH,
    Layout,
    Point,
    Recommendation,
    recommend,
)
from app.repository.config import AUTO_MAX_BATCH_SIZE, ModelConfig
from app.repository.gpu_tuning import gpu_identity, gpu_layouts, tuning_device
from app.repository.low_load import lone_request_fields
from app.repository.tuning_cache import RULE_VERSION, TuningCache, default_cache_dir, file_sha256
from app.repository.tuning_inputs import TuningInputs
from app.repository.tuning_result import Tuning, from_dict, to_dict
from app.runtime import OnnxInstance
from app.runtime.providers import CPU, CUDA
from app.runtime.session import repeat_rows
from app.timing import Stability

log = logging.getLogger(__name__)


#: The server's own cost of one batch (hand-off, concatenation, answering its requests):
#: digits on 2 cores, C=32, served 185 us a request in batches of 4 and 118 in batches of
#: 16, about 0.36 ms a batch; a small CNN about 0.26 ms.
SERVING_COST_PER_BATCH_MS = 0.3
#: Share of the best served throughput within which the largest batch is chosen.
BATCH_TOLERANCE = 0.05
#: Share of the tuning budget kept for the lone-request checks (app.repository.low_load:
#: spinning and the low-load instance, a fraction of a second a point).
SPINNING_SHARE = 0.2
#: Passes over the points on a CPU, the tuning budget split between them: each point keeps
#: its faster pass, as `batchserve profile` does. Other work only slows a measurement down,
#: so the faster of two short looks varies less between tunings than one long one
#: (load_tests/report/TUNING_NOISE.md). One on a GPU, whose largest batches need the whole
#: budget to be reached.
CPU_PASSES = 2
#: A served batch may compute this long even where the default latency target is tighter
#: (ten times batch 1's latency, 5 ms at least): the small CNNs' 2.5 ms bound kept their
#: batches at 2-4, which served 15% slower than batches of 16 (6 ms).
BATCH_LATENCY_FLOOR_MS = 25.0


@dataclass(frozen=True)
class TuneSettings:
    """The server's tuning settings (BATCHSERVE_AUTOTUNE*, BATCHSERVE_CACHE_DIR)."""

    enabled: bool = True
    budget_s: float = 10.0
    cache_dir: Path | None = None  # None: default_cache_dir()
    #: Per measured point: its timing windows, and how long it may take to settle.
    window_s: float = 0.1
    point_s: float = 0.6


def tune(
    model_path: Path,
    config: ModelConfig,
    *,
    settings: TuneSettings,
    label: str,
    inputs: TuningInputs,
) -> Tuning:
    """The tuning of one version (see the module docstring), measured on `inputs`; never
    raises for a profile that fails (source "failed", with the reason)."""
    if "instances" in config.model_fields_set:
        return Tuning("config", "config.toml sets [[instances]]")
    if config.autotune is False:
        return Tuning("off", "autotune = false in config.toml")
    if not settings.enabled:
        return Tuning("off", "BATCHSERVE_AUTOTUNE is off")
    cache = TuningCache(settings.cache_dir or default_cache_dir())
    try:
        device = tuning_device()
        key = _cache_key(model_path, config, inputs, device)
        cached = _cached(cache.read(key))
        if cached is not None:
            return cached
        tuning = _measure(model_path, config, settings=settings, inputs=inputs, device=device)
        if tuning.device == "cpu" and device != "cpu":  # CUDA did not really run: the CPU's
            key = _cache_key(model_path, config, inputs, "cpu")
    except Exception as exc:  # a model that profiles badly still serves, on the defaults
        reason = f"profiling failed: {exc}"
        log.warning("%s: %s; it serves with the default layout", label, reason)
        return Tuning("failed", reason)
    cache.write(key, to_dict(tuning))
    return tuning


def _cached(entry: dict[str, Any] | None) -> Tuning | None:
    if entry is None:
        return None
    try:
        return replace(from_dict(entry), source="cache")
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("tuning cache entry %s is not a tuning (%s): measuring again", entry, exc)
        return None


def _cache_key(
    model_path: Path, config: ModelConfig, inputs: TuningInputs, device: str = "cpu"
) -> dict[str, Any]:
    """Everything that decides the result (see app.repository.tuning_cache)."""
    on_gpu = device != "cpu"
    return {
        "rule": RULE_VERSION,
        "model_sha256": file_sha256(model_path),
        "device": gpu_identity() if on_gpu else cpu_identity(),
        "provider": CUDA if on_gpu else CPU,
        "cores": available_cores(),
        "onnxruntime": ort.__version__,
        "max_batch_size": config.max_batch_size,
        "preferred_batch_sizes": config.batching.preferred_batch_sizes,
        "sequence_length": _sequence_length(config),
        "inputs": inputs.label,
        "inputs_sha256": None if inputs.file is None else file_sha256(inputs.file),
    }


def _sequence_length(config: ModelConfig) -> int:
    if config.tokenizer is not None:
        return min(DEFAULT_SEQUENCE_LENGTH, config.tokenizer.max_length)
    return DEFAULT_SEQUENCE_LENGTH


def _measure(
    model_path: Path,
    config: ModelConfig,
    *,
    settings: TuneSettings,
    inputs: TuningInputs,
    device: str = "cpu",
) -> Tuning:
    started = time.monotonic()
    probe, device = _probe(model_path, device)
    on_gpu = device != "cpu"
    passes = 1 if on_gpu else CPU_PASSES
    specs = probe.inputs
    sample = inputs.read(specs, probe.outputs)
    del probe
    fixed = [s for s in specs if not s.shape or s.shape[0] >= 0]
    batching = not fixed and config.max_batch_size != 0
    if batching:
        limit = config.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        sizes = measure.batch_sizes(limit, config.batching.preferred_batch_sizes)
    else:
        sizes = (1,)
    length = _sequence_length(config)

    def feeds_for(size: int) -> dict[str, np.ndarray]:
        rows = size if batching else None
        if sample is not None:
            return repeat_rows(sample, rows)
        return measure.synthetic_feeds(specs, rows, length)

    profile_settings = one_pass_settings(settings, device=device, batch_sizes=sizes)
    profile = measure.profile(model_path, split_passes(profile_settings, passes), feeds_for)
    chosen = recommend(profile.points, None, batching)
    tuning = chosen_tuning(chosen, profile.points, config, batching=batching,
                           inputs=inputs.label, device="cuda" if on_gpu else "cpu")  # fmt: skip
    if not on_gpu:  # a GPU session has no threads to spin, nor a low-load twin
        fields = lone_request_fields(
            model_path, chosen.layout, profile.points, tuning.batch_size or 1, feeds_for,
            profile_settings,
        )  # fmt: skip
        tuning = replace(tuning, **fields)
    return replace(tuning, seconds=time.monotonic() - started)


def one_pass_settings(
    settings: TuneSettings, *, device: str, batch_sizes: tuple[int, ...]
) -> measure.ProfileSettings:
    """The profile of a tuning on `device` as one pass: every layout using all the cores (one
    or two instances a GPU), within the budget's share for it."""
    cores = available_cores()
    on_gpu = device != "cpu"
    return measure.ProfileSettings(
        device=device,
        layouts=gpu_layouts(cores) if on_gpu else measure.default_layouts("cpu", cores),
        batch_sizes=batch_sizes,
        window_s=settings.window_s,
        stability=Stability(max_seconds=settings.point_s),
        passes=1,
        budget_s=settings.budget_s * (1 if on_gpu else 1 - SPINNING_SHARE),
    )


def split_passes(settings: measure.ProfileSettings, passes: int) -> measure.ProfileSettings:
    """`settings` as `passes` passes within the same time: each its share of the budget and
    of every point's time to settle."""
    if passes == 1 or settings.budget_s is None:
        return settings
    stability = replace(settings.stability, max_seconds=settings.stability.max_seconds / passes)
    return replace(
        settings, passes=passes, budget_s=settings.budget_s / passes, stability=stability
    )


def _probe(model_path: Path, device: str) -> tuple[OnnxInstance, str]:
    """A session on `device` to read the model's inputs from, and the device tuning measures:
    the CPU where a GPU session cannot be had or does not really get CUDA."""
    try:
        probe = measure.open_instances(model_path, device, Layout(1, 1))[0]
    except ProfileError as exc:
        if device == "cpu":
            raise
        log.warning("no CUDA session on %s (%s): tuning for the CPU", device, exc)
        return measure.open_instances(model_path, "cpu", Layout(1, 1))[0], "cpu"
    if device != "cpu" and probe.providers[0] != CUDA:
        log.warning("a session on %s got %s, not CUDA: tuning for the CPU", device,
                    probe.providers)  # fmt: skip
        device = "cpu"
    return probe, device


def chosen_tuning(
    chosen: Recommendation,
    points: list[Point],
    config: ModelConfig,
    *,
    batching: bool,
    inputs: str,
    device: str,
) -> Tuning:
    """The recommendation as a tuning: its layout, the batch the server forms (near the best
    served throughput, `serving_batch_size`, computing within half the target,
    or BATCH_LATENCY_FLOOR_MS on a CPU) and max_batch_size (on a GPU the largest batch within
    half the target: its throughput grows with the batch far past a CPU's; never below the
    auto-complete default, so requests it took stay accepted)."""
    layout = chosen.layout
    max_batch_size, batch_size = config.max_batch_size, None
    if batching:
        floor = 0.0 if device == "cuda" else BATCH_LATENCY_FLOOR_MS
        bound = max(chosen.target_ms / 2, floor)
        within = [p for p in points if p.layout == layout and p.latency_ms_p50 <= bound]
        batch_size = (
            serving_batch_size(within, layout.count) if within else chosen.max_batch_size or 1
        )
        largest = (chosen.max_batch_size or 1) if device == "cuda" else batch_size
        max_batch_size = config.max_batch_size or max(largest, AUTO_MAX_BATCH_SIZE)
        batch_size = min(batch_size, max_batch_size)
    return Tuning(
        source="tuned", count=layout.count, threads=layout.threads,
        max_batch_size=max_batch_size, batch_size=batch_size, inputs=inputs, device=device,
    )  # fmt: skip


def serving_batch_size(points: list[Point], instances: int = 1) -> int:
    """The batch the server should form, from one layout's compute profile: among the
    batches whose throughput, counting the server's fixed cost per batch, is within
    BATCH_TOLERANCE of the best, the largest for one instance and the middle one (the upper
    of two) for several. One instance has nobody to share a burst with, and a larger batch
    holds its throughput under any load. Several instances share it only if a batch leaves
    some: a small CNN on two 1-thread instances at C=32 served 0.87 of its best in batches
    of 16 or 32, where one instance took the whole burst and the other waited, and
    0.99-1.00 in batches of 4-8. The smallest near batch is no safer: where compute per
    sample is flat, timing noise puts batch 1 within reach, and a medium CNN served 0.87 of
    its best in batches of 1, 0.94 in batches of 4. A transformer at 128 tokens, whose
    compute per sample grows with the batch, served best at 4 and lost 25% at 32
    (load_tests/bench_zero_config.py)."""

    def served(point: Point) -> float:
        return point.batch_size / (point.latency_ms_p50 + SERVING_COST_PER_BATCH_MS)

    best = max(served(p) for p in points)
    near = sorted(p.batch_size for p in points if served(p) >= (1 - BATCH_TOLERANCE) * best)
    return near[-1] if instances == 1 else near[len(near) // 2]
