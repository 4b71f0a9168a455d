"""Latency-target batching against hand-tuned fixed configurations (issue: hardware-sized
batches). `make bench-latency` writes load_tests/report/LATENCY.md and latency.json.

A compute-bound model (the heavy CNN of testing/synthetic_models.py, batch-1 run over
10 ms here) is served under open-loop Poisson load at 50%, 80% and 95% of its capacity by:
- fixed configurations: max_queue_delay_ms in (0, 1, 2, 5, 10) x max_batch_size in (4, 16);
- latency-target mode: latency_target_ms = TARGET, max_batch_size 16, nothing else tuned.
For each load level it reports p99 (of the answered requests), answered throughput and the
429s; the claim to check is that latency-target mode keeps p99 under the target wherever a
fixed configuration can, at a throughput at least that of the best such fixed one.

On a shared 2-core machine one window's p99 is decided by a handful of requests, and a spell
of the machine's own noise (another process, the load generator's own share of the cores) moves
it by hundreds of ms. So every server runs for the whole benchmark, and each round gives every
configuration one window at each level, in a shuffled order: a noisy spell lands on a
different configuration each round instead of deciding one of them. p99 is over all rounds'
answers pooled; the spread of the rounds' own p99 is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from load_tests.loadgen import LoadGenerator, PreparedRequest, client_session
from testing.server_process import ServerProcess
from testing.synthetic_models import write_cnn_model

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (0.5, 0.8, 0.95)
DELAYS_MS = (0, 1, 2, 5, 10)
BATCHES = (4, 16)


def request() -> PreparedRequest:
    x = np.random.default_rng(0).random((1, 1, 56, 56), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 1, 56, 56], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    return PreparedRequest(
        json.dumps(body).encode(), {"Content-Type": "application/json"}, 1, False
    )


def configs(target_ms: float) -> dict[str, str]:
    found = {
        f"fixed delay {d} ms, max batch {b}": (
            f"max_batch_size = {b}\n[batching]\nmax_queue_delay_ms = {d}\nmax_queue_size = 4096\n"
        )
        for b in BATCHES
        for d in DELAYS_MS
    }
    found[f"latency target {target_ms:g} ms"] = (
        f"max_batch_size = 16\n[batching]\nlatency_target_ms = {target_ms}\nmax_queue_size = 4096\n"
    )
    return found


def serve(work: Path, name: str, config: str, model: Path) -> ServerProcess:
    root = work / name.replace(" ", "_").replace(",", "")
    (root / "heavy" / "1").mkdir(parents=True)
    shutil.copy(model, root / "heavy" / "1" / "model.onnx")
    instances = '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 2\n'
    (root / "heavy" / "config.toml").write_text(config + instances)
    return ServerProcess(root)


async def capacity(url: str, seconds: float) -> float:
    async with client_session(32) as http:
        generator = LoadGenerator(url, "heavy", request())
        await generator.closed_loop(http, 32, 1.0)
        return (await generator.closed_loop(http, 32, seconds)).throughput


async def open_loop(url: str, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """One window of Poisson arrivals at `rate` (the arrival times drawn from `seed`): the
    answers' latencies and the statuses."""
    async with client_session(2000) as http:
        generator = LoadGenerator(url, "heavy", request())
        result = await generator.open_loop(http, rate, seconds, seed=seed)
    return {"seconds": result.seconds, "latencies_s": list(result.ok_latencies_s),
            "statuses": dict(result.statuses)}  # fmt: skip


def decisions(server: ServerProcess) -> dict[str, float]:
    """Latency-target mode's refusals so far: on arrival (shed) and when a request's turn came
    too late to make the target (late)."""
    name = "batchserve_batcher_decisions_total"
    return {d: server.metric(name, model="heavy", decision=d) for d in ("shed", "late")}


def p99_ms(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99)) * 1000 if latencies else float("inf")


def pooled(windows: list[dict[str, Any]], rate: float, target_ms: float) -> dict[str, Any]:
    """One configuration at one level, over all its windows."""
    seconds = sum(w["seconds"] for w in windows)
    ok = [s for w in windows for s in w["latencies_s"]]
    statuses: dict[int, int] = {}
    for w in windows:
        for status, count in w["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    rounds = [p99_ms(w["latencies_s"]) for w in windows]
    return {
        "offered_per_s": rate,
        "answered_per_s": statuses.get(200, 0) / seconds,
        # Goodput: answers that made the target, per second.
        "within_target_per_s": sum(1 for s in ok if s * 1000 <= target_ms) / seconds,
        "p99_ms": p99_ms(ok),
        "round_p99_ms": rounds,
        "rejected_429": statuses.get(429, 0),
        "shed_on_arrival": sum(w["decisions"]["shed"] for w in windows),
        "refused_late": sum(w["decisions"]["late"] for w in windows),
        "other_failures": sum(n for s, n in statuses.items() if s not in (200, 429)),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def run(target_ms: float, seconds: float, rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="batchserve-bench-latency-"))
    model = work / "heavy.onnx"
    write_cnn_model(model, channels=(128, 256, 512), size=56)
    named = configs(target_ms)
    results: dict[str, Any] = {"target_ms": target_ms, "levels": list(LEVELS), "configs": {},
                               "rounds": rounds, "window_s": seconds}  # fmt: skip
    servers: dict[str, ServerProcess] = {}
    try:
        for name, config in named.items():
            servers[name] = serve(work, name, config, model)
        reference = servers["fixed delay 0 ms, max batch 16"]
        results["capacity_per_s"] = cap = asyncio.run(capacity(reference.url, seconds))
        print(f"capacity {cap:.1f} req/s", flush=True)
        windows: dict[tuple[str, float], list[dict[str, Any]]] = {}
        order = random.Random(0)
        for round_ in range(rounds):
            for level in LEVELS:
                names = list(named)
                order.shuffle(names)
                for name in names:
                    before = decisions(servers[name])
                    # The same arrivals for every configuration within a round, new ones
                    # each round: the bursts that decide a p99 differ between rounds.
                    window = asyncio.run(
                        open_loop(servers[name].url, level * cap, seconds, seed=round_)
                    )
                    after = decisions(servers[name])
                    window["decisions"] = {k: after[k] - before[k] for k in after}
                    windows.setdefault((name, level), []).append(window)
                    p99 = p99_ms(window["latencies_s"])
                    print(f"  round {round_ + 1} {level:4.0%} {name:34} p99 {p99:8.1f} ms  "
                          f"429s {window['statuses'].get(429, 0)}", flush=True)  # fmt: skip
        for name in named:
            rows = []
            for level in LEVELS:
                row = pooled(windows[(name, level)], level * cap, target_ms)
                row["level"] = level
                rows.append(row)
            results["configs"][name] = rows
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    target = results["target_ms"]
    mode = next(name for name in results["configs"] if name.startswith("latency target"))
    rows = []
    for index, level in enumerate(results["levels"]):
        fixed = {name: r[index] for name, r in results["configs"].items() if name != mode}
        meeting = {n: r for n, r in fixed.items() if r["p99_ms"] <= target}
        best = max(meeting.items(), key=lambda kv: kv[1]["answered_per_s"], default=None)
        ours = results["configs"][mode][index]
        most = max(fixed.items(), key=lambda kv: kv[1]["within_target_per_s"])
        best_rate = best[1]["answered_per_s"] if best else None
        rows.append({
            "level": level,
            "fixed_meeting_target": len(meeting),
            "best_fixed": best[0] if best else None,
            "best_fixed_per_s": best[1]["answered_per_s"] if best else None,
            "best_fixed_p99_ms": best[1]["p99_ms"] if best else None,
            "target_mode_per_s": ours["answered_per_s"],
            "target_mode_p99_ms": ours["p99_ms"],
            "target_mode_429": ours["rejected_429"],
            "target_mode_shed_on_arrival": ours.get("shed_on_arrival", 0),
            "target_mode_refused_late": ours.get("refused_late", 0),
            "most_goodput_fixed": most[0],
            "most_goodput_fixed_per_s": most[1]["within_target_per_s"],
            "throughput_ratio": ours["answered_per_s"] / best_rate if best_rate else None,
            "best_fixed_within_target_per_s": best[1]["within_target_per_s"] if best else None,
            "target_mode_within_target_per_s": ours["within_target_per_s"],
            "goodput_ratio": (ours["within_target_per_s"] / best[1]["within_target_per_s"]
                              if best else None),
            "meets_target": ours["p99_ms"] <= target,
        })  # fmt: skip
    return rows


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["verdicts"] = verdicts(results)
    (out / "latency.json").write_text(json.dumps(results, indent=2))
    target = results["target_ms"]
    lines = [
        f"# Latency-target batching vs fixed configurations (target p99 {target:g} ms)",
        "",
        f"Heavy CNN (batch-1 over 10 ms), one 2-thread worker; capacity "
        f"{results['capacity_per_s']:.1f} req/s (closed loop, C=32); open-loop Poisson load. "
        f"{results['rounds']} rounds, each giving every configuration one "
        f"{results['window_s']:g} s window per level in a shuffled order; p99 over the "
        "rounds' answers pooled (in brackets: the lowest and highest of the rounds' own p99).",
        "",
        "| config | "
        + " | ".join(f"{lv:.0%}: req/s, p99 ms (rounds), 429s" for lv in results["levels"])
        + " |",
        "|---|" + "---|" * len(results["levels"]),
    ]
    for name, rows in results["configs"].items():
        cells = [
            f"{r['answered_per_s']:.1f}, {r['p99_ms']:.0f} ({min(r['round_p99_ms']):.0f}-"
            f"{max(r['round_p99_ms']):.0f}), {r['rejected_429']}"
            for r in rows
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Best: the fixed configuration with the highest throughput among those whose p99 "
        "met the target. Goodput: answers within the target per second. 429s of latency "
        "target mode: refused on arrival + refused when their turn came too late.",
        "",
        "| load | fixed configs under target | best of them (req/s, p99, goodput) | "
        "latency target mode (req/s, p99, 429s, goodput) | throughput ratio | goodput ratio | "
        "most goodput of any fixed config |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in results["verdicts"]:
        best = (f"{v['best_fixed']}: {v['best_fixed_per_s']:.1f}, {v['best_fixed_p99_ms']:.0f} ms,"
                f" {v['best_fixed_within_target_per_s']:.1f}"
                if v["best_fixed"] else "none")  # fmt: skip
        ratio = f"{v['throughput_ratio']:.3f}" if v["throughput_ratio"] else "-"
        goodput = f"{v['goodput_ratio']:.3f}" if v["goodput_ratio"] else "-"
        lines.append(
            f"| {v['level']:.0%} | {v['fixed_meeting_target']} | {best} | "
            f"{v['target_mode_per_s']:.1f}, {v['target_mode_p99_ms']:.0f} ms, "
            f"{v['target_mode_shed_on_arrival']:.0f} + {v['target_mode_refused_late']:.0f}, "
            f"{v['target_mode_within_target_per_s']:.1f} | {ratio} | {goodput} | "
            f"{v['most_goodput_fixed']}: {v['most_goodput_fixed_per_s']:.1f} |"
        )
    (out / "LATENCY.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-ms", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="one window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers of the run are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args.target_ms, args.seconds, args.rounds)
    write_report(results, args.out)
    print((args.out / "LATENCY.md").read_text())


if __name__ == "__main__":
    main()
