"""What unloading gives back: a hundred unload/load cycles of the text model and of the image
model against a real server installed as pip installs it, requests in flight at each
unload; the resident set per cycle (plotted), its slope over cycles 10-100 and how much of
each load its unload gives back. Then the allocator choices side by side over fewer cycles
(glibc as it comes, glibc with the server's fixed mmap threshold, jemalloc and tcmalloc
preloaded where installed), and the fixed threshold's cost in served throughput against
glibc's own, in alternating rounds (load_tests/report/RELOAD.md; ~25 min).

    python -m load_tests.bench_reload --out load_tests/report [--cycles 100] [--compare 30]

With `--model-memory BYTES` it runs the hundred cycles alone, under that memory budget (the
server loading on request and evicting to fit), into RELOAD_BUDGET.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes.util
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from app.cpuinfo import cpu_identity
from load_tests.loadgen import LoadGenerator, PreparedRequest, client_session
from load_tests.studies.reload_cycles import (
    Cycle,
    ReloadCycles,
    copy_model,
    image_bodies,
    resident,
    text_bodies,
)
from testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
#: The slope is fitted from this cycle on: the first cycles settle the allocator's arenas.
SLOPE_FROM = 10
#: glibc as it comes: the server's fixed mmap threshold off.
GLIBC_OWN = {"BATCHSERVE_MALLOC_MMAP_THRESHOLD": "0"}


def bodies(model: str) -> list[dict[str, Any]]:
    if model == "minilm":
        return text_bodies(64)
    return image_bodies(MODELS / model / "sample.jpg", 32)


def allocators() -> dict[str, dict[str, str]]:
    """The variants compared: name -> the server's extra environment."""
    variants = {"glibc, its own threshold": GLIBC_OWN, "glibc, fixed threshold (default)": {}}
    for name, library in (("jemalloc", "jemalloc"), ("tcmalloc", "tcmalloc_minimal")):
        found = ctypes.util.find_library(library)
        if found:
            variants[f"{name} preloaded"] = {"LD_PRELOAD": found}
    return variants


def run_cycles(
    model: str, cycles: int, env: dict[str, str], cache: Path
) -> tuple[float, list[Cycle]]:
    """The server's resident MiB once its models loaded, and `cycles` unload/load cycles."""
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as work:
        repository = Path(work)
        copy_model(MODELS / model, repository)
        server_env = {"BATCHSERVE_MODEL_CONTROL": "true", "BATCHSERVE_CACHE_DIR": str(cache)}
        server = ServerProcess(repository, env={**server_env, **env})
        try:
            started = resident(server.pid)[0]
            done = asyncio.run(
                ReloadCycles(server, model=model, how="unload", bodies=bodies(model)).run(
                    cycles, on_cycle=_progress
                )
            )
        finally:
            server.stop()
    return started, done


def _progress(index: int, cycle: Cycle) -> None:
    if index % 10 == 9:
        print(f"    cycle {index + 1}: {cycle.loaded_mib:.0f} MiB loaded, {cycle.threads} threads")


def summarize(started: float, cycles: list[Cycle]) -> dict[str, Any]:
    """Slope of the loaded RSS over cycles SLOPE_FROM.. (least squares, MiB per cycle and
    as a share of its mean), and each unload's give-back: what it freed over what the
    load after it took."""
    loaded = [c.loaded_mib for c in cycles]
    unloaded = [c.unloaded_mib or 0.0 for c in cycles]
    before = [started, *loaded[:-1]]
    returned = [
        (previous - low) / (high - low)
        for previous, low, high in zip(before, unloaded, loaded, strict=True)
        if high > low
    ]
    tail = loaded[SLOPE_FROM - 1 :] if len(loaded) > SLOPE_FROM else loaded
    slope = statistics.linear_regression(range(len(tail)), tail).slope if len(tail) > 1 else 0.0
    return {
        "started_mib": started,
        "loaded_mib": loaded,
        "unloaded_mib": unloaded,
        "threads": [c.threads for c in cycles],
        "seconds": [c.seconds for c in cycles],
        "statuses": {str(k): sum(c.statuses[k] for c in cycles) for k in (200, 503)},
        "unexpected": sum(len(c.unexpected) for c in cycles),
        "slope_mib": slope,
        "slope_share": slope / statistics.fmean(tail),
        "returned_median": statistics.median(returned),
        "returned_min": min(returned),
        "load_cost_mib": statistics.median(h - lo for h, lo in zip(loaded, unloaded, strict=True)),
    }


def request_of(body: dict[str, Any]) -> PreparedRequest:
    rows = body["inputs"][0]["shape"][0]
    headers = {"Content-Type": "application/json"}
    return PreparedRequest(json.dumps(body).encode(), headers, rows, False)


async def throughput_ab(model: str, rounds: int, seconds: float, cache: Path) -> dict[str, Any]:
    """Requests/s of glibc's own threshold (A) and the fixed one (B), one server each,
    windows alternating A, B then B, A; each round's B/A."""
    requests = [request_of(b) for b in bodies(model)]
    with tempfile.TemporaryDirectory(prefix="bench-reload-ab-") as work:
        repository = Path(work)
        copy_model(MODELS / model, repository)
        env = {"BATCHSERVE_CACHE_DIR": str(cache)}
        servers = {
            "A": ServerProcess(repository, env={**env, **GLIBC_OWN}),
            "B": ServerProcess(repository, env=env),
        }
        rates: dict[str, list[float]] = {"A": [], "B": []}
        try:
            async with client_session(16) as http:
                for server in servers.values():  # warm-up
                    await LoadGenerator(server.url, model, requests).closed_loop(http, 16, 2.0)
                for index in range(rounds):
                    for name in ("A", "B") if index % 2 == 0 else ("B", "A"):
                        generator = LoadGenerator(servers[name].url, model, requests)
                        result = await generator.closed_loop(http, 16, seconds)
                        assert result.failures == 0, result.summary()
                        rates[name].append(result.ok / result.seconds)
        finally:
            for server in servers.values():
                server.stop()
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    return {"rates": rates, "ratios": ratios, "median_ratio": statistics.median(ratios)}


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for axis, (model, data) in zip(axes[0], results.items(), strict=True):
        cycles = range(1, len(data["loaded_mib"]) + 1)
        axis.plot(cycles, data["loaded_mib"], label="after load")
        axis.plot(cycles, data["unloaded_mib"], label="after unload")
        axis.axhline(data["started_mib"], color="grey", linestyle=":", label="at start")
        axis.set_title(f"{model}: resident set per cycle")
        axis.set_xlabel("unload/load cycle")
        axis.set_ylabel("MiB")
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Unload and load: what the server gives back (load_tests/bench_reload.py)",
        "",
        f"CPU: {data['cpu']}. Each cycle: 8 clients send requests (texts of 1-120 words, or "
        "1-2 JPEG crops of 80-640 px) until the model is unloaded; once the server logs its "
        "versions released the resident set is read (after unload), the model is loaded "
        "again and it is read again (after load). The server runs as `pip install` leaves "
        "it (glibc, no allocator preloaded), tuning at load on, from one cache.",
        "",
        f"## {data['cycles']} cycles",
        "",
        "| model | at start | cycle 1 loaded | last loaded | slope over cycles "
        f"{SLOPE_FROM}-{data['cycles']} | an unload gives back (median, least) | threads "
        "first, last | answered 200 / 503 / other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, row in data["main"].items():
        lines.append(
            f"| {model} | {row['started_mib']:.0f} MiB | {row['loaded_mib'][0]:.0f} MiB | "
            f"{row['loaded_mib'][-1]:.0f} MiB | {row['slope_mib']:+.2f} MiB/cycle "
            f"({row['slope_share']:+.3%}) | {row['returned_median']:.0%}, "
            f"{row['returned_min']:.0%} of {row['load_cost_mib']:.0f} MiB | "
            f"{row['threads'][0]}, {row['threads'][-1]} | {row['statuses']['200']} / "
            f"{row['statuses']['503']} / {row['unexpected']} |"
        )
    lines += ["", "![resident set per cycle](reload.png)", ""]
    lines += [
        f"## Allocators, {data['compare_cycles']} cycles each",
        "",
        "| model | allocator | cycle 1 loaded | last loaded | after unload, first to last | "
        "slope | gives back (median) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, variants in data["compare"].items():
        for name, row in variants.items():
            unloaded = row["unloaded_mib"]
            lines.append(
                f"| {model} | {name} | {row['loaded_mib'][0]:.0f} MiB | "
                f"{row['loaded_mib'][-1]:.0f} MiB | {unloaded[0]:.0f} -> {unloaded[-1]:.0f} "
                f"MiB | {row['slope_mib']:+.2f} MiB/cycle | {row['returned_median']:.0%} |"
            )
    lines += [
        "",
        "## The fixed threshold's cost in throughput",
        "",
        "Closed loop, 16 clients, the same request mix; glibc's own threshold (A) against the "
        "fixed one (B), one server each, windows alternating.",
        "",
        "| model | B/A per round | median |",
        "|---|---|---:|",
    ]
    for model, row in data["throughput"].items():
        rounds = ", ".join(f"{r:.2f}" for r in row["ratios"])
        lines.append(f"| {model} | {rounds} | {row['median_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    parser.add_argument("--models", default="minilm,effnet")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--compare", type=int, default=30, help="cycles per allocator")
    parser.add_argument("--rounds", type=int, default=6, help="throughput rounds")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    parser.add_argument("--model-memory", help="only the cycles, under this memory budget")
    args = parser.parse_args()
    models = args.models.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model_memory:
        under_budget(models, args.cycles, args.model_memory, args.out)
        return
    data: dict[str, Any] = {
        "cpu": f"{cpu_identity()}, {os.cpu_count()} cores", "cycles": args.cycles,
        "compare_cycles": args.compare, "main": {}, "compare": {}, "throughput": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-reload-cache-") as cache_dir:
        cache = Path(cache_dir)
        for model in models:
            print(f"{model}: {args.cycles} cycles")
            data["main"][model] = summarize(*run_cycles(model, args.cycles, {}, cache))
        for model in models:
            data["compare"][model] = {}
            for name, env in allocators().items():
                print(f"{model}, {name}: {args.compare} cycles")
                data["compare"][model][name] = summarize(
                    *run_cycles(model, args.compare, env, cache)
                )
        for model in models:
            print(f"{model}: throughput, {args.rounds} rounds")
            data["throughput"][model] = asyncio.run(
                throughput_ab(model, args.rounds, args.seconds, cache)
            )
    (args.out / "reload.json").write_text(json.dumps(data, indent=1))
    plot(data["main"], args.out / "reload.png")
    (args.out / "RELOAD.md").write_text(report(data))
    print(report(data))


def under_budget(models: list[str], cycles: int, budget: str, out: Path) -> None:
    """The cycles with BATCHSERVE_MODEL_MEMORY set: the reload issue's bar with a budget on."""
    data: dict[str, Any] = {
        "cpu": f"{cpu_identity()}, {os.cpu_count()} cores", "cycles": cycles,
        "model_memory": budget, "main": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-reload-cache-") as cache_dir:
        for model in models:
            print(f"{model}: {cycles} cycles under a budget of {budget}")
            env = {"BATCHSERVE_MODEL_MEMORY": budget}
            data["main"][model] = summarize(*run_cycles(model, cycles, env, Path(cache_dir)))
    (out / "reload_budget.json").write_text(json.dumps(data, indent=1))
    lines = [
        "# Unload/load cycles under a memory budget",
        "",
        f"Machine: {data['cpu']}. `python -m load_tests.bench_reload --model-memory {budget}`: "
        f"{cycles} unload/load cycles per model with requests in flight, the server under "
        "a memory budget (loads on request, evictions to fit).",
        "",
        "| model | resident after load, first / last (MiB) | slope, cycles "
        f"{SLOPE_FROM}-{cycles} (MiB/cycle, share of mean) | unload gives back (median, "
        "min) | answers 200 / 503 | unexpected |",
        "|---|---|---|---|---|---|",
    ]
    for model, row in data["main"].items():
        loaded = row["loaded_mib"]
        lines.append(
            f"| {model} | {loaded[0]:.0f} / {loaded[-1]:.0f} | {row['slope_mib']:+.3f} "
            f"({row['slope_share']:+.2%}) | {row['returned_median']:.2f}, "
            f"{row['returned_min']:.2f} | {row['statuses']['200']} / {row['statuses']['503']} "
            f"| {row['unexpected']} |"
        )
    (out / "RELOAD_BUDGET.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
