"""A/B throughput of two batchserve servers, in alternating rounds of one run.

    python -m load_tests.bench_ab --baseline main        # a git ref against the working tree
    python -m load_tests.bench_ab --env-b BATCHSERVE_METRICS=false   # one tree, two settings
    python -m load_tests.bench_ab --baseline main --encodings json,binary,grpc

Server A runs the code of `--baseline` (checked out into a temporary git worktree, run with
this interpreter: the ref must need no package this environment lacks) or, without it, the
working tree; server B runs the working tree (launched as A is). Both serve the same
repository (the shipped models by default) on 127.0.0.1. Each round runs a closed loop of
1-row requests against every (encoding, server) pair in turn, A and B back to back, so drift
in a shared, noisy machine hits both alike; the report gives each round and the ratio of the
medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from load_tests.loadgen import LoadGenerator, Loops, client_session, prepare_request
from load_tests.loadgen.grpc_client import GrpcLoadGenerator, open_channels, prepare_grpc_request
from testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
#: HTTP/2 connections the gRPC encoding spreads its calls over (as loadgen --channels).
GRPC_CHANNELS = 4


async def closed_loop(
    server: ServerProcess, model: str, *, encoding: str, concurrency: int, seconds: float
) -> tuple[float, float]:
    """Requests/s of one window (after a short warm-up), and the server's CPU time per
    request in microseconds (less noisy than throughput on a shared machine: the load
    generator's share of the cores does not count); raises on failures. `encoding`: json
    or binary over REST, or grpc (ModelInfer with raw contents over GRPC_CHANNELS)."""
    async with contextlib.AsyncExitStack() as stack:
        if encoding == "grpc":
            session: Any = open_channels(server.grpc_target, GRPC_CHANNELS)
            for channel in session:
                stack.push_async_callback(channel.close)
            grpc_request = await prepare_grpc_request(session[0], model, rows=1)
            generator: Loops = GrpcLoadGenerator(grpc_request, 1)
        else:
            session = await stack.enter_async_context(client_session(concurrency))
            request = await prepare_request(
                session, server.url, model, rows=1, binary=encoding == "binary"
            )
            generator = LoadGenerator(server.url, model, request)
        await generator.closed_loop(session, concurrency, min(1.0, seconds))  # warm-up
        cpu_before = cpu_seconds(server.pid)
        executions_before = server.metric("batchserve_executions_total", model=model)
        result = await generator.closed_loop(session, concurrency, seconds)
        cpu = cpu_seconds(server.pid) - cpu_before
        executions = server.metric("batchserve_executions_total", model=model) - executions_before
    print(f"  mean batch {result.ok / max(executions, 1):.1f}", end="")
    if result.failures:
        raise RuntimeError(f"{server.url}: {result.failures} failed responses: {result.summary()}")
    return result.throughput, 1e6 * cpu / max(result.ok, 1)


async def closed_loop_at(
    url: str, model: str, *, binary: bool, concurrency: int, seconds: float
) -> float:
    """Requests/s of one window at `url` (after a short warm-up); raises on failures."""
    async with client_session(concurrency) as http:
        request = await prepare_request(http, url, model, rows=1, binary=binary)
        generator = LoadGenerator(url, model, request)
        await generator.closed_loop(http, concurrency, min(1.0, seconds))  # warm-up
        result = await generator.closed_loop(http, concurrency, seconds)
    if result.failures:
        raise RuntimeError(f"{url}: {result.failures} failed responses: {result.summary()}")
    return result.throughput


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """`ref` checked out into a temporary worktree (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="batchserve-ab-") as parent:
        tree = Path(parent) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        ref], check=True)  # fmt: skip
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)  # fmt: skip


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        env[name] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REF", help="git ref server A runs")
    parser.add_argument("--env-a", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--repository-b", type=Path, help="server B's repository (default: A's)")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--encodings", default="json,binary", help="of json, binary, grpc")
    args = parser.parse_args()
    label_a = (
        f"A ({args.baseline or 'working tree'}{' ' + ' '.join(args.env_a) if args.env_a else ''})"
    )
    label_b = f"B (working tree{' ' + ' '.join(args.env_b) if args.env_b else ''})"
    encodings = args.encodings.split(",")

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(checkout(args.baseline)) if args.baseline else None
        grpc = "grpc" in encodings
        servers = {
            label_a: ServerProcess(
                args.model_repository, env=parse_env(args.env_a), source=source, grpc=grpc
            ),
            # Launched as A is (`python -m app` from a source tree) where A is a checkout, so
            # that the two servers differ in their code only, not in how they were started.
            label_b: ServerProcess(
                args.repository_b or args.model_repository,
                env=parse_env(args.env_b),
                source=None if source is None else ROOT,
                grpc=grpc,
            ),
        }
        for server in servers.values():
            stack.callback(server.stop)
        rounds: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for number in range(args.rounds):
            for encoding in encodings:
                order = list(servers.items())
                if number % 2:
                    order.reverse()  # neither server always goes first
                for name, server in order:
                    rps, cpu_us = asyncio.run(
                        closed_loop(server, args.model, encoding=encoding,
                                    concurrency=args.concurrency, seconds=args.duration)
                    )  # fmt: skip
                    rounds.setdefault((encoding, name), []).append(rps)
                    cpu.setdefault((encoding, name), []).append(cpu_us)
                    print(f"round {number + 1} {encoding:6} {name}: {rps:.0f} req/s, "
                          f"{cpu_us:.1f} us CPU/request", flush=True)  # fmt: skip

    print(f"\nmodel {args.model}, 1 sample/request, closed loop C={args.concurrency}, "
          f"{args.rounds} alternating rounds of {args.duration:g} s\n")  # fmt: skip
    print("| encoding | server | req/s per round | median req/s | median server CPU us/request |")
    print("|---|---|---|---|---|")
    for key, values in rounds.items():
        print(f"| {key[0]} | {key[1]} | {', '.join(f'{v:.0f}' for v in values)} | "
              f"{statistics.median(values):.0f} | {statistics.median(cpu[key]):.1f} |")  # fmt: skip
    print()
    for encoding in encodings:
        a, b = (statistics.median(rounds[(encoding, label)]) for label in (label_a, label_b))
        cpu_a, cpu_b = (statistics.median(cpu[(encoding, label)]) for label in (label_a, label_b))
        # Each round's A and B windows ran back to back: their ratio cancels the drift that
        # moves both, so the median of the per-round ratios is the steadier figure.
        paired = statistics.median(
            y / x for x, y in zip(rounds[(encoding, label_a)], rounds[(encoding, label_b)],
                                  strict=True)
        )  # fmt: skip
        print(f"{encoding}: throughput B / A = {b / a:.3f} (median of per-round ratios "
              f"{paired:.3f}); server CPU per request B / A = {cpu_b / cpu_a:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
