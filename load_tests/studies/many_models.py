"""A fleet of models made from the shipped ones, and open-loop traffic over it whose
popularity follows Zipf's law, as a per-customer or per-tenant fleet's does: what the bench
of many models in bounded memory (load_tests/bench_many_models.py) runs.

The copies are hard links of the shipped files under their own names, so the repository
costs no disk; each is its own model to the server (its own cost, its own residency), and
copies of one file share one tuning result.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from load_tests.studies.reload_cycles import image_bodies, text_bodies

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
#: kind -> (shipped model, the version copied, the files beside the versions it needs).
KINDS = {
    "text": ("minilm", "3", ("config.toml", "tokenizer.json")),
    "image": ("effnet", "2", ("config.toml", "labels.txt")),
    "digits": ("digits", "1", ("config.toml",)),
}
#: Requests in flight at most: past it an arrival is counted as dropped, not sent (bounded).
MAX_IN_FLIGHT = 512


def build_fleet(root: Path, counts: dict[str, int]) -> dict[str, str]:
    """`counts[kind]` copies of each kind under `root`; returns name -> kind."""
    fleet = {}
    for kind, count in counts.items():
        source_name, version, files = KINDS[kind]
        source = MODELS / source_name
        for index in range(count):
            name = f"{kind}{index:02d}"
            target = root / name
            (target / version).mkdir(parents=True)
            for file in (f"{version}/model.onnx", *files):
                _link_or_copy(source / file, target / file)
            fleet[name] = kind
    return fleet


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def zipf_weights(names: list[str], exponent: float, seed: int) -> dict[str, float]:
    """Each model's share of the traffic: rank k (a seeded shuffle) gets 1 / k^exponent."""
    ranked = sorted(names)
    random.Random(seed).shuffle(ranked)
    raw = [1.0 / (rank + 1) ** exponent for rank in range(len(ranked))]
    total = sum(raw)
    return {name: weight / total for name, weight in zip(ranked, raw, strict=True)}


def request_bodies(kind: str, count: int = 16) -> list[dict[str, Any]]:
    if kind == "text":
        return text_bodies(count)
    if kind == "image":
        return image_bodies(MODELS / "effnet" / "sample.jpg", count)
    rng = np.random.default_rng(0)
    return [
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                     "data": rng.uniform(0, 16, 64).round(1).tolist()}]}
        for _ in range(count)
    ]  # fmt: skip


def tree_rss_mib(pid: int) -> float:
    """Resident MiB of `pid` and every process under it (the JSON parsing pool)."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # gone while we looked
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        stack.extend(int(child) for child in children)
    return total


class RssSampler:
    """Samples the server's tree resident set every `interval_s` in a thread of its own."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = time.monotonic()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.monotonic() - self._began, tree_rss_mib(self.pid)))


@dataclass
class Traffic:
    """What one run of Zipf traffic was answered, per model."""

    seconds: float
    latencies_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    dropped: int = 0

    def total(self, status: int | None = None) -> int:
        return sum(sum(c.values()) if status is None else c[status] for c in self.statuses.values())

    def p99_ms(self, model: str) -> float:
        return float(np.percentile(self.latencies_s[model], 99) * 1000)


async def zipf_traffic(
    url: str,
    *,
    weights: dict[str, float],
    bodies: dict[str, list[dict[str, Any]]],
    rate: float,
    seconds: float,
    seed: int,
) -> Traffic:
    """Open loop: Poisson arrivals at `rate` per second for `seconds`, each for a model
    drawn by `weights`; latency counts from each request's scheduled time."""
    rng = random.Random(seed)
    names, shares = list(weights), list(weights.values())
    traffic = Traffic(seconds)
    in_flight: set[asyncio.Task[None]] = set()
    sent: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as http:

        async def send(name: str, body: dict[str, Any], scheduled: float) -> None:
            async with http.post(f"{url}/v2/models/{name}/infer", json=body) as response:
                await response.read()
                traffic.statuses[name][response.status] += 1
                if response.status == 200:
                    traffic.latencies_s[name].append(loop.time() - scheduled)

        start = loop.time()
        scheduled = start
        while (scheduled := scheduled + rng.expovariate(rate)) < start + seconds:
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            name = rng.choices(names, shares)[0]
            if len(in_flight) >= MAX_IN_FLIGHT:
                traffic.dropped += 1
                continue
            body = bodies[name][sent[name] % len(bodies[name])]
            sent[name] += 1
            task = loop.create_task(send(name, body, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    return traffic


async def closed_loop(
    url: str, model: str, bodies: list[dict[str, Any]], *, concurrency: int, seconds: float
) -> float:
    """Answered requests per second of `concurrency` clients sending `bodies` in turn."""
    answered = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as http:
        stop = time.monotonic() + seconds

        async def client(index: int) -> None:
            nonlocal answered
            while time.monotonic() < stop:
                body = bodies[index % len(bodies)]
                index += concurrency
                async with http.post(f"{url}/v2/models/{model}/infer", json=body) as response:
                    await response.read()
                    answered += response.status == 200

        began = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return answered / (time.monotonic() - began)
