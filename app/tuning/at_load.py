"""Tuning at load: a model whose config leaves its instances unset is profiled before it
reports ready, and served with the layout and batch sizes its device runs fastest.

The measurement (app.tuning.measure) and the rule (app.tuning.plan) are `batchserve
profile`'s, bounded by a time budget (the layouts taking turns; two passes on a CPU), on the
model directory's real inputs where it has any (the repository's samples; synthetic ones
only when there is nothing else). The result is cached (app.tuning.cache), so a restart or a
second replica on the same kind of machine loads at once. What the config fixes is passed in
as `ModelLimits` and never overridden; a profile that fails leaves the model on the defaults
it had before, with the reason logged and reported.

Blocking (ORT sessions): run it from the loading thread, never from an event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from app.cores import available_cores
from app.cpuinfo import cpu_identity
from app.runtime import OnnxInstance
from app.runtime.feeds import repeat_rows
from app.runtime.providers import CPU, CUDA
from app.tensors import TensorSpec, fixed_batch_input
from app.tuning import measure
from app.tuning.cache import RULE_VERSION, TuningCache, default_cache_dir, file_sha256
from app.tuning.errors import TuningError
from app.tuning.gpu import gpu_identity, gpu_layouts, tuning_device
from app.tuning.low_load import for_lone_requests
from app.tuning.plan import DEFAULT_MAX_BATCH_SIZE, DEFAULT_SEQUENCE_LENGTH, plan
from app.tuning.points import Layout
from app.tuning.result import Tuning, from_dict, from_plan, to_dict
from app.tuning.timing import Stability

log = logging.getLogger(__name__)


#: Share of the tuning budget kept for the lone-request checks (app.tuning.low_load:
#: spinning and the low-load instance, a fraction of a second a point).
SPINNING_SHARE = 0.2
#: Passes over the points on a CPU, the tuning budget split between them: each point keeps
#: its faster pass, as `batchserve profile` does. Other work only slows a measurement down,
#: so the faster of two short looks varies less between tunings than one long one
#: (load_tests/report/TUNING_NOISE.md). One on a GPU, whose largest batches need the whole
#: budget to be reached.
CPU_PASSES = 2


@dataclass(frozen=True)
class TuneSettings:
    """The server's tuning settings (BATCHSERVE_AUTOTUNE*, BATCHSERVE_CACHE_DIR)."""

    enabled: bool = True
    budget_s: float = 10.0
    cache_dir: Path | None = None  # None: default_cache_dir()
    #: Per measured point: its timing windows, and how long it may take to settle.
    window_s: float = 0.1
    point_s: float = 0.6


@dataclass(frozen=True)
class ModelLimits:
    """What the model's config fixes, which tuning measures within and keeps."""

    #: None: tuning chooses it.
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    #: Length of variable non-batch axes in synthetic inputs (the tokenizer's max_length).
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH


class Samples(Protocol):
    """Real inputs to measure on (app.repository.samples): where from, and how to read
    them for a graph (None: there are none, and synthetic ones are used)."""

    @property
    def file(self) -> Path | None: ...

    @property
    def label(self) -> str: ...

    def read(
        self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> dict[str, np.ndarray] | None: ...


def tune(
    model_path: Path,
    *,
    limits: ModelLimits,
    settings: TuneSettings,
    label: str,
    samples: Samples,
) -> Tuning:
    """The tuning of one version (see the module docstring), measured on `samples`; never
    raises for a profile that fails (source "failed", with the reason)."""
    cache = TuningCache(settings.cache_dir or default_cache_dir())
    try:
        device = tuning_device()
        key = _cache_key(model_path, limits, samples, device)
        cached = _cached(cache.read(key))
        if cached is not None:
            return cached
        tuning = _measure(model_path, limits, settings=settings, samples=samples, device=device)
        if tuning.device == "cpu" and device != "cpu":  # CUDA did not really run: the CPU's
            key = _cache_key(model_path, limits, samples, "cpu")
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
    model_path: Path, limits: ModelLimits, samples: Samples, device: str = "cpu"
) -> dict[str, Any]:
    """Everything that decides the result (see app.tuning.cache)."""
    on_gpu = device != "cpu"
    return {
        "rule": RULE_VERSION,
        "model_sha256": file_sha256(model_path),
        "device": gpu_identity() if on_gpu else cpu_identity(),
        "provider": CUDA if on_gpu else CPU,
        "cores": available_cores(),
        "onnxruntime": ort.__version__,
        "max_batch_size": limits.max_batch_size,
        "preferred_batch_sizes": list(limits.preferred_batch_sizes),
        "sequence_length": limits.sequence_length,
        "inputs": samples.label,
        "inputs_sha256": None if samples.file is None else file_sha256(samples.file),
    }


def _measure(
    model_path: Path,
    limits: ModelLimits,
    *,
    settings: TuneSettings,
    samples: Samples,
    device: str = "cpu",
) -> Tuning:
    started = time.monotonic()
    probe, device = _probe(model_path, device)
    on_gpu = device != "cpu"
    passes = 1 if on_gpu else CPU_PASSES
    specs = probe.inputs
    sample = samples.read(specs, probe.outputs)
    del probe
    batching = fixed_batch_input(specs) is None and limits.max_batch_size != 0
    if batching:
        limit = limits.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        sizes = measure.batch_sizes(limit, limits.preferred_batch_sizes)
    else:
        sizes = (1,)

    def feeds_for(size: int) -> dict[str, np.ndarray]:
        rows = size if batching else None
        if sample is not None:
            return repeat_rows(sample, rows)
        return measure.synthetic_feeds(specs, rows, limits.sequence_length)

    profile_settings = one_pass_settings(settings, device=device, batch_sizes=sizes)
    profile = measure.profile(model_path, split_passes(profile_settings, passes), feeds_for)
    chosen = plan(profile.points, batching=batching, device=device,
                  max_batch_size=limits.max_batch_size)  # fmt: skip
    if not on_gpu:  # a GPU session has no threads to spin, nor a low-load twin
        chosen = for_lone_requests(model_path, chosen, profile.points, feeds_for,
                                   profile_settings)  # fmt: skip
    tuning = from_plan(chosen, inputs=samples.label, device="cuda" if on_gpu else "cpu")
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
    except TuningError as exc:
        if device == "cpu":
            raise
        log.warning("no CUDA session on %s (%s): tuning for the CPU", device, exc)
        return measure.open_instances(model_path, "cpu", Layout(1, 1))[0], "cpu"
    if device != "cpu" and probe.providers[0] != CUDA:
        log.warning("a session on %s got %s, not CUDA: tuning for the CPU", device,
                    probe.providers)  # fmt: skip
        device = "cpu"
    return probe, device
