"""What metrics cost: throughput of the same load with metrics on and off, in one run.

Starts two `batchserve serve` processes on 127.0.0.1 over the shipped repository, one with
BATCHSERVE_METRICS=false, and alternates closed-loop rounds between them (A B A B ...) so
drift in a shared, noisy machine hits both alike. Reports each round and the ratio of the
medians.

    python -m load_tests.bench_metrics --rounds 5 --duration 4 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path

from load_tests.loadgen import LoadGenerator, client_session, prepare_request
from load_tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


async def round_trip(url: str, model: str, rows: int, concurrency: int, seconds: float) -> float:
    async with client_session(concurrency) as http:
        request = await prepare_request(http, url, model, rows)
        generator = LoadGenerator(url, model, request)
        await generator.closed_loop(http, concurrency, min(1.0, seconds))  # warm-up
        result = await generator.closed_loop(http, concurrency, seconds)
    if result.failures:
        raise RuntimeError(f"{url}: {result.failures} failed responses: {result.summary()}")
    return result.throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    servers = {
        "metrics on": ServerProcess(args.model_repository),
        "metrics off": ServerProcess(args.model_repository, env={"BATCHSERVE_METRICS": "false"}),
    }
    rounds: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, server in servers.items():
                rps = asyncio.run(
                    round_trip(server.url, args.model, args.rows, args.concurrency, args.duration)
                )
                rounds[name].append(rps)
    finally:
        for server in servers.values():
            server.stop()

    print(f"model {args.model}, {args.rows} sample(s)/request, closed loop C={args.concurrency}, "
          f"{args.rounds} alternating rounds of {args.duration:g} s\n")  # fmt: skip
    print("| configuration | req/s per round | median req/s |")
    print("|---|---|---|")
    medians = {}
    for name, values in rounds.items():
        medians[name] = statistics.median(values)
        print(f"| {name} | {', '.join(f'{v:.0f}' for v in values)} | {medians[name]:.0f} |")
    ratio = medians["metrics on"] / medians["metrics off"]
    print(f"\nmetrics on / metrics off = {ratio:.3f}")


if __name__ == "__main__":
    main()
