"""A load generator for any KServe v2 server: closed loop (C requests always in flight) or
open loop (Poisson arrivals at R requests/s, latency counted from each request's scheduled
send time, so a slow server cannot slow the arrivals down and hide its queueing), with JSON
or binary tensors (the binary tensor data extension, requests and responses), or over gRPC
with raw contents (grpc_client.py).

    python -m load_tests.loadgen --url http://127.0.0.1:8000 --model digits --concurrency 16
    python -m load_tests.loadgen --model digits --rate 500 --binary --settle
    python -m load_tests.loadgen --grpc 127.0.0.1:8001 --model digits --concurrency 64

Every response is checked (status 200, every output present with the request's batch size).
With --settle, windows of --duration seconds repeat until the last three agree within 10%
on throughput (as perf_analyzer does), at most --max-windows; the last three are reported.
Traffic goes only to the URL given, and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from load_tests.loadgen.grpc_client import GrpcLoadGenerator, open_channels, prepare_grpc_request
from load_tests.loadgen.rest import (
    LoadGenerator,
    Loops,
    Result,
    client_session,
    prepare_request,
    settle,
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.grpc:
        return await run_grpc(args)
    async with client_session(args.concurrency if args.rate is None else 1000) as http:
        request = await prepare_request(http, args.url, args.model, args.rows, args.binary)
        result = await windows(args, LoadGenerator(args.url, args.model, request), http)
    return result.summary()


async def run_grpc(args: argparse.Namespace) -> dict[str, Any]:
    channels = open_channels(args.grpc, args.channels)
    try:
        request = await prepare_grpc_request(channels[0], args.model, args.rows)
        result = await windows(args, GrpcLoadGenerator(request, args.rows), channels)
    finally:
        for channel in channels:
            await channel.close()
    return result.summary()


async def windows(args: argparse.Namespace, generator: Loops, session: Any) -> Result:
    """One window, or windows until settled, of the loop the arguments ask for."""

    async def window(index: int) -> Result:
        if args.rate is None:
            return await generator.closed_loop(session, args.concurrency, args.duration)
        return await generator.open_loop(session, args.rate, args.duration, seed=index)

    return await (settle(window, args.max_windows) if args.settle else window(0))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.loadgen", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rows", type=int, default=1, help="samples per request")
    parser.add_argument("--binary", action="store_true", help="binary tensors both ways")
    parser.add_argument(
        "--grpc", metavar="HOST:PORT", help="call ModelInfer over gRPC there instead of HTTP"
    )
    parser.add_argument("--channels", type=int, default=1, help="gRPC: connections to use")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: in flight")
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--settle", action="store_true", help="repeat windows until stable")
    parser.add_argument("--max-windows", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
