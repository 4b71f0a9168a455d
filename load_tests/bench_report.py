"""The benchmark report of load_tests/bench.py: its measurements, REPORT.md, results.json and
the latency/throughput plots."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Case(Protocol):
    """A benchmarked model, as the report names it (bench.ModelCase)."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def concurrencies(self) -> tuple[int, ...]: ...


@dataclass
class Measurement:
    model: str
    config: str
    concurrency: int
    throughput: float  # successful requests (= samples, one per request) per second
    p50_ms: float
    p99_ms: float
    stable: bool
    failures: int
    mean_batch: float | None = None  # batchserve only: samples per execution at this level


@dataclass
class Report:
    raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    batch_histograms: dict[str, dict[str, float]] = field(default_factory=dict)
    head_to_head: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def best_raw(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["samples_per_s"])


def find(report: Report, model: str, config: str, concurrency: int) -> Measurement | None:
    for m in report.measurements:
        if (m.model, m.config, m.concurrency) == (model, config, concurrency):
            return m
    return None


def saturation(report: Report, model: str, config: str) -> Measurement | None:
    candidates = [m for m in report.measurements if (m.model, m.config) == (model, config)]
    return max(candidates, key=lambda m: m.throughput, default=None)


def write_report(report: Report, out: Path, cases: Sequence[Case]) -> None:
    lines = ["# batchserve benchmark report", "",
             f"Machine: {os.cpu_count()} cores; load generator and servers share it. "
             "Closed loops of 1-row requests, settled (last three windows within 10%). "
             "Throughput in requests/s (= samples/s).", ""]  # fmt: skip
    for case in cases:
        raw = report.raw[case.name]
        best = best_raw(raw)
        raw1 = next(r for r in raw if r["batch"] == 1 and r["threads"] == best["threads"])
        lines += [f"## {case.name}: {case.description}", "",
                  f"Raw ONNX Runtime at its best: {best['samples_per_s']:.0f} samples/s "
                  f"(batch {best['batch']}, {best['threads']} thread(s)); batch 1: "
                  f"{raw1['latency_ms']:.2f} ms.", "",
                  "| configuration | C=1 req/s | C=1 p50 ms | saturation req/s | at C | "
                  "p99 ms there | mean batch there | % of raw best |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        configs = dict.fromkeys(m.config for m in report.measurements if m.model == case.name)
        for config in configs:
            one = find(report, case.name, config, 1)
            top = saturation(report, case.name, config)
            if one is None or top is None:
                continue
            share = 100 * top.throughput / best["samples_per_s"]
            batch = f"{top.mean_batch:.1f}" if top.mean_batch is not None else ""
            lines.append(
                f"| {config} | {one.throughput:.0f} | {one.p50_ms:.2f} | {top.throughput:.0f} | "
                f"{top.concurrency} | {top.p99_ms:.1f} | {batch} | {share:.0f}% |"
            )
        if case.name == "digits" and report.head_to_head:
            lines += ["", "Head to head at C=64, windows alternating between the servers (so "
                      "drift hits all alike), medians:", "",
                      "| configuration | median req/s | vs hand-written | vs constant ASGI "
                      "(uvicorn) | median p50 ms | rounds req/s |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            by_name = {row["config"]: row for row in report.head_to_head}
            handwritten = by_name.get("hand-written FastAPI (JSON)", {}).get("median_rps")
            ceiling = by_name.get("constant ASGI (uvicorn)", {}).get("median_rps")
            for row in report.head_to_head:
                vs_hand = f"{row['median_rps'] / handwritten:.2f}x" if handwritten else ""
                vs_ceiling = f"{100 * row['median_rps'] / ceiling:.0f}%" if ceiling else ""
                lines.append(
                    f"| {row['config']} | {row['median_rps']:.0f} | {vs_hand} | {vs_ceiling} | "
                    f"{row['median_p50_ms']:.2f} | {', '.join(f'{r:.0f}' for r in row['rounds'])} |"
                )
        lines += ["", f"![{case.name}](bench_{case.name}.png)", ""]
        lines.append("")
    lines += [
        "## Raw ONNX Runtime per batch size",
        "",
        "| model | threads | batch | latency ms | samples/s |",
        "|---|---|---|---|---|",
    ]
    for name, rows in report.raw.items():
        lines += [f"| {name} | {r['threads']} | {r['batch']} | {r['latency_ms']:.3f} | "
                  f"{r['samples_per_s']:.0f} |" for r in rows]  # fmt: skip
    if report.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report.notes]]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "raw": report.raw,
                "measurements": [m.__dict__ for m in report.measurements],
                "batch_histograms": report.batch_histograms,
                "head_to_head": report.head_to_head,
            },
            indent=1,
        )
    )
    plot(report, out, cases)


def plot(report: Report, out: Path, cases: Sequence[Case]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for case in cases:
        figure, (curve, histogram) = plt.subplots(1, 2, figsize=(13, 4.8))
        configs = dict.fromkeys(m.config for m in report.measurements if m.model == case.name)
        for config in configs:
            points = sorted(
                (m for m in report.measurements if (m.model, m.config) == (case.name, config)),
                key=lambda m: m.concurrency,
            )
            curve.plot([m.throughput for m in points], [m.p50_ms for m in points], marker="o",
                       label=config)  # fmt: skip
        best = best_raw(report.raw[case.name])["samples_per_s"]
        curve.axvline(best, color="k", linestyle="--", label="raw ORT best")
        title = f"{case.name}: latency vs throughput, C in {case.concurrencies}"
        curve.set(xlabel="throughput (requests/s)", ylabel="p50 latency (ms)", yscale="log",
                  xscale="log",
                  title=title)  # fmt: skip
        curve.legend(fontsize=7)
        hist = report.batch_histograms.get(case.name, {})
        bounds = sorted((float(k), v) for k, v in hist.items() if k not in ("+Inf", "sum", "count"))
        if bounds:
            counts = np.diff([0.0] + [v for _, v in bounds])
            labels = [f"≤{b:g}" for b, _ in bounds]
            histogram.bar(labels, counts)
            histogram.set(xlabel="samples per execution", ylabel="executions",
                          title=f"{case.name}: batch sizes (batching, JSON run)")  # fmt: skip
        figure.tight_layout()
        figure.savefig(out / f"bench_{case.name}.png", dpi=90)
        plt.close(figure)
