"""Measure model variants against a baseline: accuracy or agreement, size, speed.

Every variant runs through the server's own session setup (app.runtime.OnnxInstance: same
providers, thread settings and graph optimizations), so the numbers are what serving them
would see. Speed is measured interleaved: each round times every variant once, in a rotated
order, and the median round is reported, so a ratio between variants comes from one run on
one machine state rather than from runs minutes apart. Blocking throughout (ORT sessions):
call it from a command or a thread, never from an event loop.
"""

from __future__ import annotations

import gzip
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.errors import ModelLoadError
from app.optimize.data import Dataset
from app.optimize.errors import OptimizeError
from app.optimize.versions import model_files
from app.runtime import OnnxInstance
from app.tensors import TensorSpec
from app.tuning.timing import Window, time_window, warm_up

#: Samples per run when computing outputs over a whole data set (models with a dynamic batch).
EVAL_CHUNK = 256


@dataclass(frozen=True)
class Candidate:
    """A model file to measure; `name` labels it in reports (e.g. "v2")."""

    name: str
    path: Path
    description: str


@dataclass(frozen=True)
class BenchSettings:
    """How speed is measured: per batch size, `rounds` windows of at least `window_s` each."""

    device: str = "cpu"
    threads: int = 1
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    rounds: int = 5
    window_s: float = 0.2


@dataclass(frozen=True)
class BatchPerf:
    batch_size: int
    latency_ms_p50: float
    latency_ms_p90: float
    #: Samples per second: the median over rounds of (samples run / window time).
    throughput_sps: float
    runs: int


@dataclass(frozen=True)
class Agreement:
    """How closely a variant's outputs follow the baseline's on the same inputs."""

    #: Share of samples whose predicted class is the baseline's.
    top1: float
    #: Cosine similarity of each sample's float outputs to the baseline's (mean and worst).
    cosine_mean: float | None
    cosine_min: float | None
    #: Largest absolute difference in any float output.
    max_abs_diff: float | None


@dataclass(frozen=True)
class VariantResult:
    name: str
    description: str
    path: str
    size_bytes: int
    #: Size after gzip: what unstructured (zeroed) weights save, as dense files don't shrink.
    gzip_bytes: int
    providers: list[str]
    accuracy: float | None
    agreement: Agreement | None
    perf: list[BatchPerf] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """The whole measurement; the first variant is the baseline the others compare to."""

    baseline: str
    rows: int
    prediction_output: str
    settings: BenchSettings
    onnxruntime: str
    variants: list[VariantResult]

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def accuracy_drop_pp(self, variant: VariantResult) -> float | None:
        """Percentage points of accuracy lost against the baseline (negative: gained)."""
        base = self.variants[0].accuracy
        if base is None or variant.accuracy is None:
            return None
        return (base - variant.accuracy) * 100.0

    def throughput_ratio(self, variant: VariantResult, batch_size: int) -> float:
        base = next(p for p in self.variants[0].perf if p.batch_size == batch_size)
        mine = next(p for p in variant.perf if p.batch_size == batch_size)
        return mine.throughput_sps / base.throughput_sps


def open_instance(path: Path, device: str, threads: int) -> OnnxInstance:
    """A session as the server would make it; device errors say which providers it got."""
    try:
        return OnnxInstance(path, device, threads=threads, index=0)
    except ModelLoadError as exc:
        hint = ""
        if "float16" in str(exc).lower() or "NOT_IMPLEMENTED" in str(exc):
            hint = "; fp16 models need a GPU: measure them with --device cuda:N"
        raise OptimizeError(f"{exc}{hint}") from None


def prediction_output(outputs: Sequence[TensorSpec], chosen: str | None) -> str:
    """The output that holds the predicted class: `chosen`, else the first integer output of
    rank 1 (a label), else the first float output (its argmax over the last axis)."""
    names = [o.name for o in outputs]
    if chosen is not None:
        if chosen not in names:
            raise OptimizeError(f"--output {chosen!r} is not an output of the model: {names}")
        return chosen
    for spec in outputs:
        if spec.datatype.startswith(("INT", "UINT")) and len(spec.shape) == 1:
            return spec.name
    for spec in outputs:
        if spec.datatype.startswith("FP"):
            return spec.name
    raise OptimizeError(
        f"no output to compare predictions on among {names}; name one with --output"
    )


def check_same_io(base: OnnxInstance, variant: OnnxInstance, name: str) -> None:
    """A variant must take and give what the baseline does, so clients and the model's
    config.toml (batching, padding, tokenizer) apply to it unchanged."""
    for kind, mine, theirs in (
        ("inputs", variant.inputs, base.inputs),
        ("outputs", variant.outputs, base.outputs),
    ):
        got = [(s.name, s.datatype, s.shape) for s in mine]
        want = [(s.name, s.datatype, s.shape) for s in theirs]
        if got != want:
            raise OptimizeError(
                f"{name} has {kind} {got}, the baseline {want}: clients and config.toml would "
                "not fit it"
            )


def run_all(instance: OnnxInstance, data: Dataset) -> dict[str, np.ndarray]:
    """Every output over the whole data set, in chunks the model's batch axis allows."""
    first = instance.inputs[0].shape
    chunk = first[0] if first and first[0] > 0 else EVAL_CHUNK
    if data.rows % chunk and chunk != EVAL_CHUNK:
        raise OptimizeError(
            f"the model's batch axis is fixed at {chunk} but the data has {data.rows} rows; "
            f"give a multiple of {chunk}"
        )
    parts: dict[str, list[np.ndarray]] = {o.name: [] for o in instance.outputs}
    for start in range(0, data.rows, chunk):
        for name, value in instance.run(data.rows_slice(start, start + chunk)).items():
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def predictions(outputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    value = outputs[output]
    if np.issubdtype(value.dtype, np.floating) and value.ndim >= 2:
        return np.asarray(value.argmax(axis=-1)).reshape(len(value), -1)[:, 0]
    return value.reshape(len(value), -1)[:, 0]


def agreement(
    base: dict[str, np.ndarray], mine: dict[str, np.ndarray], output: str, only: bool = False
) -> Agreement:
    """Top-1 on `output`; cosine and largest difference over every float output, or over
    `output` alone when `only` (an embedding model's pooled output, say, rather than its
    padded per-token states)."""
    top1 = float(np.mean(predictions(base, output) == predictions(mine, output)))
    cosines: list[np.ndarray] = []
    max_abs = 0.0
    for name, reference in base.items():
        if (only and name != output) or not np.issubdtype(reference.dtype, np.floating):
            continue
        a = reference.reshape(len(reference), -1).astype(np.float64)
        b = mine[name].reshape(len(reference), -1).astype(np.float64)
        max_abs = max(max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        dots = np.sum(a * b, axis=1)
        both_zero = norms == 0
        cosines.append(np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms)))
    if not cosines:
        return Agreement(top1=top1, cosine_mean=None, cosine_min=None, max_abs_diff=None)
    every = np.concatenate(cosines)
    return Agreement(
        top1=top1,
        cosine_mean=float(every.mean()),
        cosine_min=float(every.min()),
        max_abs_diff=max_abs,
    )


def file_sizes(path: Path) -> tuple[int, int]:
    """Bytes on disk (the model and its external data) and after gzip."""
    files = model_files(path)
    raw = b"".join(p.read_bytes() for p in files)
    return len(raw), len(gzip.compress(raw, compresslevel=6, mtime=0))


def benchmark(
    instances: dict[str, OnnxInstance], data: Dataset, settings: BenchSettings
) -> dict[str, list[BatchPerf]]:
    """Latency and throughput of every instance per batch size, measured interleaved: each
    round times every instance for one window (app.tuning.timing), in a rotated order."""
    names = list(instances)
    results: dict[str, list[BatchPerf]] = {name: [] for name in names}
    for size in settings.batch_sizes:
        feeds = data.batch(size)
        for instance in instances.values():
            warm_up(instance.run, feeds)
        windows: dict[str, list[Window]] = {name: [] for name in names}
        for round_index in range(settings.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                windows[name].append(
                    time_window(instances[name].run, feeds, size, settings.window_s)
                )
        for name in names:
            times_ms = np.array(Window.merge(windows[name]).latencies_s) * 1000.0
            results[name].append(
                BatchPerf(
                    batch_size=size,
                    latency_ms_p50=float(np.percentile(times_ms, 50)),
                    latency_ms_p90=float(np.percentile(times_ms, 90)),
                    throughput_sps=float(
                        statistics.median(w.throughput_sps for w in windows[name])
                    ),
                    runs=len(times_ms),
                )
            )
    return results


def evaluate(
    candidates: Sequence[Candidate],
    data: Dataset,
    settings: BenchSettings,
    output: str | None = None,
) -> Evaluation:
    """Measure `candidates` (the first is the baseline) on `data` on one device."""
    if not candidates:
        raise OptimizeError("nothing to evaluate")
    instances = {
        c.name: open_instance(c.path, settings.device, settings.threads) for c in candidates
    }
    base = instances[candidates[0].name]
    for candidate in candidates[1:]:
        check_same_io(base, instances[candidate.name], f"{candidate.name} ({candidate.path})")
    chosen = prediction_output(base.outputs, output)
    outputs = {name: run_all(instance, data) for name, instance in instances.items()}
    perf = benchmark(instances, data, settings) if settings.batch_sizes else {}
    variants = []
    for candidate in candidates:
        mine = outputs[candidate.name]
        size, packed = file_sizes(candidate.path)
        accuracy = None
        if data.labels is not None:
            accuracy = float(np.mean(predictions(mine, chosen) == data.labels))
        variants.append(
            VariantResult(
                name=candidate.name,
                description=candidate.description,
                path=str(candidate.path),
                size_bytes=size,
                gzip_bytes=packed,
                providers=list(instances[candidate.name].providers),
                accuracy=accuracy,
                agreement=None
                if candidate is candidates[0]
                else agreement(outputs[candidates[0].name], mine, chosen, output is not None),
                perf=perf.get(candidate.name, []),
            )
        )
    return Evaluation(
        baseline=candidates[0].name,
        rows=data.rows,
        prediction_output=chosen,
        settings=settings,
        onnxruntime=ort.__version__,
        variants=variants,
    )
