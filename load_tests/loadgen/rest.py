"""The HTTP load generator: closed loop (C requests always in flight) or open loop (Poisson
arrivals at R requests/s, latency counted from each request's scheduled send time, so a slow
server cannot slow the arrivals down and hide its queueing), with JSON or binary tensors (the
binary tensor data extension, requests and responses). Every response is checked (status 200,
every output present with the request's batch size). Traffic goes only to the URL given, and
every run is bounded in time. The command line is load_tests/loadgen/__main__.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
         "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip
BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass
class Result:
    """What one run (or the merged windows of a settled run) measured."""

    mode: str
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    #: Latencies of the answered (200) requests alone: what a served client saw.
    ok_latencies_s: list[float] = field(default_factory=list)
    #: HTTP statuses, or gRPC status code names (OK counts as 200).
    statuses: Counter[int | str] = field(default_factory=Counter)
    bad_responses: int = 0
    rows: int = 1
    windows: int = 1
    stable: bool = True

    def record(self, latency_s: float, status: int | str, valid: bool = True) -> None:
        """One answered (or failed) request; `valid`: an OK answer had what was asked."""
        self.latencies_s.append(latency_s)
        self.statuses[status] += 1
        if status == 200:
            self.ok_latencies_s.append(latency_s)
            self.bad_responses += not valid

    @property
    def ok(self) -> int:
        return self.statuses[200] - self.bad_responses

    @property
    def failures(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != 200) + self.bad_responses

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
            "windows": self.windows,
            "stable": self.stable,
            "requests_ok": self.ok,
            "throughput_rps": round(self.throughput, 1),
            "samples_per_s": round(self.throughput * self.rows, 1),
            **{f"p{q}_ms": round(self.percentile(q) * 1000, 3) for q in (50, 90, 95, 99)},
            "max_ms": round(max(self.latencies_s, default=float("nan")) * 1000, 3),
            "errors_by_status": {str(k): v for k, v in self.statuses.items() if k != 200},
            "bad_responses": self.bad_responses,
        }

    @staticmethod
    def merge(parts: list[Result]) -> Result:
        merged = Result(parts[0].mode, sum(p.seconds for p in parts), rows=parts[0].rows)
        for part in parts:
            merged.latencies_s.extend(part.latencies_s)
            merged.ok_latencies_s.extend(part.ok_latencies_s)
            merged.statuses.update(part.statuses)
            merged.bad_responses += part.bad_responses
        merged.windows = len(parts)
        return merged


@dataclass(frozen=True)
class PreparedRequest:
    """One request body sent over and over, and how to read its responses."""

    body: bytes
    headers: dict[str, str]
    rows: int
    binary: bool


def sample_inputs(metadata: dict[str, Any], rows: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(name, shape and datatype; data) of each input, `rows` random samples shaped from a
    model's v2 metadata (the same data every time)."""
    rng = np.random.default_rng(0)
    inputs = []
    for spec in metadata["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        if spec["shape"] and spec["shape"][0] < 0:
            shape[0] = rows
        data = (rng.random(shape) * 16).astype(NUMPY[spec["datatype"]])
        inputs.append(({"name": spec["name"], "shape": shape, "datatype": spec["datatype"]}, data))
    return inputs


def build_request(metadata: dict[str, Any], rows: int, binary: bool = False) -> PreparedRequest:
    """A request with `rows` random samples, shaped from a model's v2 metadata."""
    inputs = []
    chunks = []
    for entry, data in sample_inputs(metadata, rows):
        if binary:
            chunks.append(data.tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = data.ravel().tolist()
        inputs.append(entry)
    if not binary:
        body = json.dumps({"inputs": inputs}).encode()
        return PreparedRequest(body, {"Content-Type": "application/json"}, rows, False)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    return PreparedRequest(header + b"".join(chunks), headers, rows, True)


async def prepare_request(
    session: aiohttp.ClientSession, url: str, model: str, rows: int, binary: bool = False
) -> PreparedRequest:
    """`build_request` for a model's metadata as the server at `url` reports it."""
    async with session.get(f"{url}/v2/models/{model}") as response:
        response.raise_for_status()
        metadata = await response.json()
    return build_request(metadata, rows, binary)


class Loops:
    """Closed and open loops of calls to `_one`, over a session of the transport's own kind
    (an aiohttp session, a gRPC channel)."""

    rows = 1

    async def _one(self, session: Any, result: Result, sent_at: float) -> None:
        raise NotImplementedError

    async def closed_loop(self, session: Any, concurrency: int, seconds: float) -> Result:
        result = Result(f"closed C={concurrency}", seconds, rows=self.rows)
        start = time.perf_counter()
        stop = start + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                await self._one(session, result, time.perf_counter())

        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
        return result

    async def open_loop(self, session: Any, rate: float, seconds: float, seed: int = 0) -> Result:
        result = Result(f"open R={rate:g}/s", seconds, rows=self.rows)
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
        return result


class LoadGenerator(Loops):
    """Sends a prepared request over and over (or a mix of them, in turn) over HTTP and
    checks every response."""

    def __init__(
        self, url: str, model: str, request: PreparedRequest | Sequence[PreparedRequest]
    ) -> None:
        self.endpoint = f"{url}/v2/models/{model}/infer"
        self.requests = [request] if isinstance(request, PreparedRequest) else list(request)
        self.request = self.requests[0]
        self.rows = self.request.rows
        self._turn = itertools.cycle(self.requests)

    async def _one(self, session: aiohttp.ClientSession, result: Result, sent_at: float) -> None:
        request = next(self._turn)
        try:
            async with session.post(
                self.endpoint, data=request.body, headers=request.headers
            ) as response:
                payload = await response.read()
                status = response.status
                header_length = response.headers.get(BINARY_HEADER)
        except aiohttp.ClientError:
            status, payload, header_length = 0, b"", None  # connection error
        valid = status != 200 or self._valid(payload, header_length, request.rows)
        result.record(time.perf_counter() - sent_at, status, valid)

    def _valid(self, payload: bytes, header_length: str | None, rows: int) -> bool:
        try:
            header = payload[: int(header_length)] if header_length else payload
            outputs = json.loads(header)["outputs"]
        except (ValueError, KeyError):
            return False
        return bool(outputs) and all(o["shape"] and o["shape"][0] == rows for o in outputs)


async def settle(
    window: Callable[[int], Awaitable[Result]], max_windows: int = 10, tolerance: float = 0.10
) -> Result:
    """Repeat `window(i)` until the last three throughputs agree within `tolerance`."""
    results: list[Result] = []
    for index in range(max(max_windows, 3)):
        results.append(await window(index))
        if len(results) >= 3:
            last = [r.throughput for r in results[-3:]]
            if max(last) - min(last) <= tolerance * statistics.fmean(last):
                return Result.merge(results[-3:])
    merged = Result.merge(results[-3:])
    merged.stable = False
    return merged


def client_session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 1)),
        timeout=aiohttp.ClientTimeout(total=120),
    )
