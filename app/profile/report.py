"""The profile as a table, a JSON document and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.tuning.measure import Profile
from app.tuning.plan import Plan
from app.tuning.points import Point

PROFILE_SCHEMA = "batchserve.profile/1"


@dataclass(frozen=True)
class Context:
    """What was profiled, where and how: what a reader needs to judge the numbers."""

    model: str
    version: int
    device: str
    cores: int
    onnxruntime: str
    #: Length of variable non-batch axes (None: the model has none, or --data gave them).
    sequence_length: int | None
    data: str


def to_dict(context: Context, result: Profile, recommendation: Plan) -> dict[str, Any]:
    rec = asdict(recommendation)
    rec["layout"] = {"count": recommendation.layout.count, "threads": recommendation.layout.threads}
    return {
        "schema": PROFILE_SCHEMA,
        **asdict(context),
        "providers": result.providers,
        "points": [_point(p) for p in result.points],
        "recommendation": rec,
        "config": config_snippet(recommendation, context.device),
    }


def _point(point: Point) -> dict[str, Any]:
    layout = point.layout
    fields = {"layout": layout.label, "count": layout.count, "threads": layout.threads}
    return {**asdict(point), **fields}


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def instance_tables(recommendation: Plan, device: str) -> list[dict[str, Any]]:
    """The recommendation's `[[instances]]` lines for `device`: its layout (spinning where
    chosen), then the low-load-only instance where there is one."""
    layout = recommendation.layout
    main: dict[str, Any] = {"device": device, "count": layout.count, "threads": layout.threads}
    if recommendation.spinning:
        main["spinning"] = True
    if recommendation.low_load_threads is None:
        return [main]
    low_load: dict[str, Any] = {"device": device, "count": 1,
                                "threads": recommendation.low_load_threads}  # fmt: skip
    if recommendation.low_load_spinning:
        low_load["spinning"] = True
    low_load["low_load_only"] = True
    return [main, low_load]


def config_snippet(recommendation: Plan, device: str) -> str:
    """The recommendation as the config.toml lines it stands for."""
    lines = []
    if recommendation.max_batch_size is not None:
        lines += [
            f"max_batch_size = {recommendation.max_batch_size}",
            "",
            "[batching]",
            f"preferred_batch_sizes = {recommendation.preferred_batch_sizes}",
            "",
        ]
    for index, table in enumerate(instance_tables(recommendation, device)):
        lines += [*([""] if index else []), "[[instances]]"]
        # JSON writes these values (strings, integers, booleans) as TOML does.
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def to_markdown(context: Context, result: Profile, recommendation: Plan) -> str:
    bound = recommendation.target_ms / 2
    length = context.sequence_length
    length_text = "" if length is None else f", sequence length {length}"
    lines = [
        f"# Profile of {context.model} v{context.version} on {context.device}",
        "",
        f"{context.cores} cores, ONNX Runtime {context.onnxruntime} "
        f"({', '.join(result.providers)}); inputs: {context.data}{length_text}. Compute only (no "
        "HTTP): latency of one batch on one instance; throughput of all the layout's "
        "instances running at once.",
        "",
        "| layout | batch | p50 ms | p90 ms | samples/s | within T/2 | stable |",
        "|---|---:|---:|---:|---:|:---:|:---:|",
    ]
    for p in result.points:
        chosen = p.layout == recommendation.layout and p.batch_size == recommendation.batch_size
        lines.append(
            f"| {p.layout.label} | {p.batch_size}{' *' if chosen else ''} | "
            f"{p.latency_ms_p50:.3f} | {p.latency_ms_p90:.3f} | {p.throughput_sps:,.0f} | "
            f"{'yes' if p.latency_ms_p50 <= bound else 'no'} | "
            f"{'yes' if p.stable else f'no ({p.windows} windows)'} |"
        )
    layout = recommendation.layout
    lines += [
        "",
        f"Latency target T = {recommendation.target_ms:.3g} ms ({recommendation.target_source}); "
        f"a batch may compute for T/2 = {bound:.3g} ms. * = the batch the server forms.",
        "",
        f"Recommended: {layout.count} instance(s) x {layout.threads} thread(s)"
        + (" (spinning)" if recommendation.spinning else "")
        + (
            f", and a low-load-only instance of {recommendation.low_load_threads} threads"
            f"{' (spinning)' if recommendation.low_load_spinning else ''} for lone requests"
            if recommendation.low_load_threads is not None
            else ""
        )
        + (
            f", batches of {recommendation.batch_size}, max_batch_size "
            f"{recommendation.max_batch_size}"
            if recommendation.max_batch_size is not None
            else " (the model's batch axis is fixed: max_batch_size stays as it is)"
        )
        + f": {recommendation.throughput_sps:,.0f} samples/s of compute.",
    ]
    lines += [f"- note: {note}" for note in recommendation.notes]
    lines += ["", "```toml", config_snippet(recommendation, context.device).rstrip(), "```", ""]
    return "\n".join(lines)


def plot(context: Context, result: Profile, recommendation: Plan, path: Path) -> None:
    """Latency and throughput against batch size, a line per layout (matplotlib, imported
    here: only the plot needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for layout in sorted({p.layout for p in result.points}):
        mine = [p for p in result.points if p.layout == layout]
        sizes = [p.batch_size for p in mine]
        latency.plot(sizes, [p.latency_ms_p50 for p in mine], marker="o", label=layout.label)
        throughput.plot(sizes, [p.throughput_sps for p in mine], marker="o", label=layout.label)
    bound = recommendation.target_ms / 2
    latency.axhline(bound, color="grey", linestyle="--", label=f"T/2 = {bound:.3g} ms")
    if recommendation.max_batch_size is not None:
        for axes in (latency, throughput):
            axes.axvline(
                recommendation.max_batch_size, color="red", alpha=0.4, linestyle=":",
                label=f"recommended max {recommendation.max_batch_size} "
                f"({recommendation.layout.label})",
            )  # fmt: skip
    for axes, label in ((latency, "compute latency p50 (ms)"), (throughput, "samples/s")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("batch size")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, title="instances x threads", title_fontsize=7)
    latency.set_yscale("log")
    throughput.yaxis.set_major_formatter(lambda value, _position: f"{value:,.0f}")
    figure.suptitle(
        f"{context.model} v{context.version} on {context.device} ({context.cores} cores)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
