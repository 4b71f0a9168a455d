"""The report of load_tests/bench_many_models.py: its table, its text and its plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

MiB = 1 << 20


def plot(budgeted: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for index, within in enumerate(budgeted):
        times = [t for t, _ in within["samples"]]
        label = f"budget {within['fraction']:g} of the cost, round {within['round'] + 1}"
        axis.plot(times, [rss for _, rss in within["samples"]], label=label, color=f"C{index}")
        bound = within["budget"] / MiB + within["base_mib"]
        axis.axhline(bound * 1.1, linestyle="--", color=f"C{index}", linewidth=0.8)
    axis.set_xlabel("seconds of traffic")
    axis.set_ylabel("server resident set (MiB)")
    axis.set_title("Under the budget; dashed: (budget + base) x 1.1")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(data: dict[str, Any]) -> str:
    by_kind: dict[str, list[float]] = {}
    for name, cost in data["costs_mib"].items():
        by_kind.setdefault(name.rstrip("0123456789"), []).append(cost)
    fleet = ", ".join(f"{n} {k}" for k, n in data["fleet"].items())
    lines = [
        "# Many models in bounded memory",
        "",
        f"Machine: {data['machine']}. `make bench-many-models`: "
        f"{sum(data['fleet'].values())} models ({fleet}; copies of minilm v3 int8, "
        f"effnet v2 int8 and digits), open-loop Zipf traffic (s = {data['zipf_s']}) at "
        f"{data['rate']:g} requests/s for {data['seconds']:g} s a round, served with every "
        "model resident and then with budgets of "
        f"{' and '.join(f'{f:g}' for f in data['fractions'])} of their summed measured cost, "
        "in alternating rounds.",
        "",
        "Measured cost per model (MiB): "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in by_kind.items())
        + f"; summed {data['summed_cost_mib']:.0f} MiB. "
        f"Hottest model: {data['hottest']} ({data['hottest_kind']}).",
        "",
        "| budget | round | hottest p99 all resident / budget (ms) | ratio | answers | 503 | "
        "other | RSS peak / (budget + base) | loads | evictions | hit ratio | "
        "cold load p50 / p99 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rounds"]:
        p99 = r["hottest_p99_ms"]
        cold = "; ".join(
            f"{k} {v['p50']:.2f} / {v['p99']:.2f} ({v['count']})"
            for k, v in r["cold_load_s"].items()
        )
        lines.append(
            f"| {r['fraction']:g} ({r['budget_mib']:.0f} MiB) | {r['round']} | "
            f"{p99['all_resident']:.1f} / {p99['budget']:.1f} | "
            f"{r['hottest_p99_ratio']:.2f} | {r['answers']} | {r['refused_share']:.2%} | "
            f"{r['other_than_200_or_503']} | {r['rss_peak_over_budget_plus_base']:.3f} "
            f"({r['rss_peak_mib']:.0f} MiB, base {r['rss_base_mib']:.0f}) | {r['loads']:.0f} | "
            f"{r['evictions']:.0f} | {r['hit_ratio']:.3f} | {cold} |"
        )
    ratios = {n: g["ratio"] for n, g in data["unload_gives_back"].items()}
    worst = max(ratios, key=lambda n: abs(ratios[n] - 1))
    lines += [
        "",
        "![resident set under the budget](many_models.png)",
        "",
        "**What an unload gives back** (the resident set before and after each model's "
        "unload, against the cost measured at its load): ratio median "
        f"{statistics.median(ratios.values()):.2f}, furthest from 1: {worst} "
        f"{ratios[worst]:.2f} ({data['unload_gives_back'][worst]['returned_mib']:.1f} of "
        f"{data['unload_gives_back'][worst]['cost_mib']:.1f} MiB).",
        "",
        "**A cold load against raw ONNX Runtime** (ours: first request to its answer on a "
        "server with the caches warm, after a first model warmed its request path; raw: the "
        "same sessions created and one batch run, in a fresh process), medians of "
        "alternating rounds:",
        "",
        "| model | sessions (threads) | ours (s) | raw (s) | ours / raw |",
        "|---|---|---|---|---|",
    ]
    for kind, c in data["cold_load_vs_raw"].items():
        lines.append(
            f"| {kind} | {c['sessions']} | {statistics.median(c['ours_s']):.3f} | "
            f"{statistics.median(c['raw_s']):.3f} | {c['ratio']:.2f} |"
        )
    alone = data["alone_or_among_idle"]
    lines += [
        "",
        f"**Cores shared with idle models**: {alone['model']}'s closed-loop throughput (C=8, "
        "raw texts) with the whole fleet resident and idle, against a server of its own, "
        f"alternating: {alone['ratio']:.3f} (medians of "
        f"{', '.join(f'{v:.0f}' for v in alone['requests_per_s']['among_idle'])} vs "
        f"{', '.join(f'{v:.0f}' for v in alone['requests_per_s']['alone'])} requests/s).",
    ]
    return "\n".join(lines) + "\n"
