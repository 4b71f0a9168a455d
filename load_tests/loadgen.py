"""A load generator for any KServe v2 server: closed loop (C requests always in flight) or
open loop (Poisson arrivals at R requests/s, latency counted from each request's scheduled
send time, so a slow server cannot slow the arrivals down and hide its queueing).

    python -m load_tests.loadgen --url http://127.0.0.1:8000 --model digits \
        --concurrency 16 --duration 10
    python -m load_tests.loadgen --url http://127.0.0.1:8000 --model digits --rate 500

Every response is checked (status 200, every output present with the right batch size).
Traffic goes only to the URL given; runs are bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
         "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


@dataclass
class Result:
    """What one run measured."""

    mode: str
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    bad_responses: int = 0
    rows: int = 1

    @property
    def ok(self) -> int:
        return self.statuses[200] - self.bad_responses

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "requests_ok": self.ok,
            "throughput_rps": round(self.throughput, 1),
            "samples_per_s": round(self.throughput * self.rows, 1),
            **{f"p{q}_ms": round(self.percentile(q) * 1000, 3) for q in (50, 90, 95, 99)},
            "max_ms": round(max(self.latencies_s, default=float("nan")) * 1000, 3),
            "errors_by_status": {str(k): v for k, v in self.statuses.items() if k != 200},
            "bad_responses": self.bad_responses,
        }


async def request_body(session: aiohttp.ClientSession, url: str, model: str, rows: int) -> bytes:
    """A JSON infer request with `rows` random samples, shaped from the model's metadata."""
    async with session.get(f"{url}/v2/models/{model}") as response:
        response.raise_for_status()
        metadata = await response.json()
    rng = np.random.default_rng(0)
    inputs = []
    for spec in metadata["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        if spec["shape"] and spec["shape"][0] < 0:
            shape[0] = rows
        dtype = NUMPY[spec["datatype"]]
        data = (rng.random(shape) * 16).astype(dtype)
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                       "data": data.ravel().tolist()})  # fmt: skip
    return json.dumps({"inputs": inputs}).encode()


class LoadGenerator:
    """Sends one prepared request body over and over and checks every response."""

    def __init__(self, url: str, model: str, body: bytes, rows: int) -> None:
        self.endpoint = f"{url}/v2/models/{model}/infer"
        self.body = body
        self.rows = rows

    async def _one(self, session: aiohttp.ClientSession, result: Result, sent_at: float) -> None:
        try:
            async with session.post(
                self.endpoint, data=self.body, headers={"Content-Type": "application/json"}
            ) as response:
                payload = await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0  # connection error
            payload = b""
        result.latencies_s.append(time.perf_counter() - sent_at)
        result.statuses[status] += 1
        if status == 200 and not self._valid(payload):
            result.bad_responses += 1

    def _valid(self, payload: bytes) -> bool:
        try:
            outputs = json.loads(payload)["outputs"]
        except (ValueError, KeyError):
            return False
        return bool(outputs) and all(o["shape"] and o["shape"][0] == self.rows for o in outputs)

    async def closed_loop(
        self, session: aiohttp.ClientSession, concurrency: int, seconds: float
    ) -> Result:
        result = Result("closed", seconds, rows=self.rows)
        start = time.perf_counter()
        stop = start + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                await self._one(session, result, time.perf_counter())

        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
        return result

    async def open_loop(
        self, session: aiohttp.ClientSession, rate: float, seconds: float, seed: int = 0
    ) -> Result:
        result = Result("open", seconds, rows=self.rows)
        rng = random.Random(seed)
        start = time.perf_counter()
        scheduled = start
        tasks = []
        while True:
            scheduled += rng.expovariate(rate)
            if scheduled - start >= seconds:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self._one(session, result, scheduled)))
        await asyncio.gather(*tasks)
        result.seconds = seconds
        return result


def session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 1)),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with session(args.concurrency if args.rate is None else 1000) as http:
        body = await request_body(http, args.url, args.model, args.rows)
        generator = LoadGenerator(args.url, args.model, body, args.rows)
        if args.rate is None:
            result = await generator.closed_loop(http, args.concurrency, args.duration)
        else:
            result = await generator.open_loop(http, args.rate, args.duration)
    return result.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rows", type=int, default=1, help="samples per request")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: in flight")
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (bounded)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
