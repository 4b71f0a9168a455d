"""Reports of an evaluation: JSON for machines, markdown for people, a PNG plot of accuracy
against throughput. matplotlib is imported only when a plot is drawn (the `optimize` extra),
so nothing else here needs it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from app.optimize.errors import require
from app.optimize.evaluate import Evaluation, VariantResult

EVALUATION_SCHEMA = "batchserve.evaluation/1"
OPTIMIZE_SCHEMA = "batchserve.optimize/1"


def evaluation_dict(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation as plain JSON values, with each variant's drop and speed ratios."""
    data = dataclasses.asdict(evaluation)
    data["schema"] = EVALUATION_SCHEMA
    for variant, raw in zip(evaluation.variants, data["variants"], strict=True):
        raw["accuracy_drop_pp"] = evaluation.accuracy_drop_pp(variant)
        for perf in raw["perf"]:
            perf["throughput_ratio"] = evaluation.throughput_ratio(variant, perf["batch_size"])
    return data


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _kib(size: int) -> str:
    return f"{size / 1024:.1f}"


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def quality_table(evaluation: Evaluation) -> str:
    """One row per variant: size, accuracy, and agreement with the baseline."""
    lines = [
        "| version | variant | size KiB | gzip KiB | accuracy | drop (points) "
        "| top-1 agreement | cosine (worst) | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in evaluation.variants:
        drop = evaluation.accuracy_drop_pp(v)
        a = v.agreement
        lines.append(
            f"| {v.name} | {v.description} | {_kib(v.size_bytes)} | {_kib(v.gzip_bytes)} "
            f"| {_num(v.accuracy, '.4f')} | {'' if a is None else _num(drop, '+.2f')} "
            f"| {'' if a is None else _num(a.top1, '.4f')} "
            f"| {'' if a is None else _num(a.cosine_min, '.5f')} "
            f"| {'' if a is None else _num(a.max_abs_diff, '.3g')} |"
        )
    return "\n".join(lines)


def speed_table(evaluation: Evaluation) -> str:
    """Per batch size: throughput (and its ratio to the baseline's) and median latency."""
    sizes = evaluation.settings.batch_sizes
    if not sizes:
        return ""
    header = "| version | " + " | ".join(
        f"batch {s}: samples/s (x {evaluation.baseline}) | batch {s}: p50 ms" for s in sizes
    )
    lines = [header + " |", "|---|" + "---:|---:|" * len(sizes)]
    for v in evaluation.variants:
        cells = []
        for perf in v.perf:
            ratio = evaluation.throughput_ratio(v, perf.batch_size)
            cells.append(f"{perf.throughput_sps:,.0f} (x{ratio:.2f}) | {perf.latency_ms_p50:.4f}")
        lines.append(f"| {v.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(evaluation: Evaluation, title: str) -> str:
    s = evaluation.settings
    providers = sorted({p for v in evaluation.variants for p in v.providers[:1]})
    parts = [
        f"# {title}",
        "",
        f"{evaluation.rows} samples; predictions from output `{evaluation.prediction_output}`; "
        f"baseline {evaluation.baseline}. Speed: device {s.device} ({', '.join(providers)}), "
        f"{s.threads} intra-op thread(s), ONNX Runtime {evaluation.onnxruntime}; median of "
        f"{s.rounds} rounds of >= {s.window_s:g} s per variant and batch size, the variants "
        "interleaved within each round (raw session.run, no HTTP).",
        "",
        quality_table(evaluation),
    ]
    speed = speed_table(evaluation)
    if speed:
        parts += ["", speed]
    return "\n".join(parts) + "\n"


def plot(evaluation: Evaluation, path: Path, title: str) -> None:
    """Accuracy (or top-1 agreement, without labels) against throughput at the largest
    batch size measured, one labelled point per variant."""
    require("matplotlib", "the accuracy-vs-throughput plot")
    import matplotlib

    matplotlib.use("Agg")  # files only: never a display
    import matplotlib.pyplot as plt

    size = max(evaluation.settings.batch_sizes)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    has_labels = evaluation.variants[0].accuracy is not None
    for variant in evaluation.variants:
        x = next(p.throughput_sps for p in variant.perf if p.batch_size == size)
        y = _quality(variant, has_labels)
        axes.scatter([x], [y], label=f"{variant.name}: {variant.description}")
        axes.annotate(variant.name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel(f"throughput at batch {size} (samples/s, {evaluation.settings.device})")
    axes.set_ylabel("accuracy" if has_labels else f"top-1 agreement with {evaluation.baseline}")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.xaxis.set_major_formatter(lambda value, _position: f"{value:,.0f}")
    axes.margins(0.15)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _quality(variant: VariantResult, has_labels: bool) -> float:
    if has_labels:
        assert variant.accuracy is not None
        return variant.accuracy
    return 1.0 if variant.agreement is None else variant.agreement.top1
