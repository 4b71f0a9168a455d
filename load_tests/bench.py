"""The benchmark report: how close batchserve gets to the hardware, and how far ahead it is of
what users would otherwise run, all measured in ONE run on this machine.

    make bench            # or: python -m load_tests.bench [--quick] [--out DIR]

For each model (digits, shipped; a medium and a heavy image CNN built here) it measures
  raw ORT        ONNX Runtime in-process, no HTTP, per batch size (1 and 2 intra-op threads)
  handwritten    FastAPI + pydantic endpoint, one session.run per request (baselines/)
  no batching    batchserve with max_batch_size = 0
  batching       batchserve with dynamic batching (JSON and binary tensors)
and, for digits, the HTTP ceiling: constant endpoints (FastAPI and bare ASGI under uvicorn,
bare ASGI under granian when installed). Servers and load generator share the machine; every
server runs on 127.0.0.1 and every load is a closed loop bounded in time, settled like
perf_analyzer. Writes REPORT.md, results.json and PNG plots into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from load_tests.bench_report import Measurement, Report, write_report
from load_tests.loadgen import Result, settle
from load_tests.loadgen.targets import Target, loading
from testing.server_process import ServerProcess
from testing.synthetic_models import write_cnn_model

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ModelCase:
    name: str
    description: str
    threads: int  # of its one CPU instance
    concurrencies: tuple[int, ...]
    window_s: float

    def write(self, path: Path) -> None:
        if self.name == "digits":
            shutil.copy(ROOT / "models" / "digits" / "1" / "model.onnx", path)
        elif self.name == "medium":
            write_cnn_model(path, channels=(64, 128, 256), size=28)
        else:
            write_cnn_model(path, channels=(128, 256, 512), size=56)


MODELS = (
    ModelCase("digits", "models/digits, MLP 64-256-256-10 (shipped; request overhead dominates)",
              1, (1, 4, 16, 64, 128), 2.0),
    ModelCase("medium", "CNN 1x28x28, 64-128-256 channels (built; batch-1 run 1-2 ms)",
              2, (1, 4, 16, 64), 2.0),
    ModelCase("heavy", "CNN 1x56x56, 128-256-512 channels (built; batch-1 run > 10 ms)",
              2, (1, 2, 4, 8, 16), 3.0),
)  # fmt: skip


# -- models and servers -------------------------------------------------------------------


def build_repository(root: Path, batching: bool, split_threads: bool = False) -> None:
    """One version of every model; `split_threads` runs N 1-thread instances instead of one
    N-thread instance (to measure which layout this machine prefers)."""
    for case in MODELS:
        version = root / case.name / "1"
        version.mkdir(parents=True)
        case.write(version / "model.onnx")
        max_batch = 64 if batching else 0
        count, threads = (case.threads, 1) if split_threads else (1, case.threads)
        (root / case.name / "config.toml").write_text(
            f"max_batch_size = {max_batch}\n[batching]\nmax_queue_size = 4096\n"
            f'[[instances]]\ndevice = "cpu"\ncount = {count}\nthreads = {threads}\n'
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def external_server(command: list[str], env: dict[str, str], probe: str) -> Iterator[str]:
    """Start a baseline server on a free port; yields its URL once `probe` answers 200."""
    port = free_port()
    process = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + probe, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command} did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def batchserve(repository: Path) -> Iterator[ServerProcess]:
    """batchserve on `repository`, serving gRPC too."""
    server = ServerProcess(repository, grpc=True)
    try:
        yield server
    finally:
        server.stop()


def uvicorn(app: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}",
            "--log-level", "warning", "--no-access-log", "--no-proxy-headers"]  # fmt: skip


def granian(app: str) -> list[str] | None:
    exe = shutil.which("granian") or str(Path(sys.executable).with_name("granian"))
    if not Path(exe).exists():
        return None
    return [exe, "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
            "--log-level", "warning", "--no-ws", app]  # fmt: skip


# -- measurements -------------------------------------------------------------------------


def raw_onnxruntime(path: Path, quick: bool) -> list[dict[str, Any]]:
    """Samples/s and latency of session.run alone, per batch size and thread count."""
    rows = []
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        sample_shape = [int(d) for d in session.get_inputs()[0].shape[1:]]
        for batch in BATCH_SIZES:
            x = np.random.default_rng(batch).random((batch, *sample_shape), dtype=np.float32)
            session.run(None, {name: x})
            times = []
            budget = time.perf_counter() + (0.2 if quick else 1.0)
            while time.perf_counter() < budget or len(times) < 3:
                started = time.perf_counter()
                session.run(None, {name: x})
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            rows.append({"threads": threads, "batch": batch, "latency_ms": median * 1000,
                         "samples_per_s": batch / median})  # fmt: skip
    return rows


async def closed_loops(
    target: Target, model: str, concurrencies: list[int], window_s: float
) -> list[tuple[int, Result, float | None]]:
    """Settled closed loops at each concurrency, with the mean batch size batchserve
    reports for each level (None for other servers)."""
    results = []
    async with loading(target, model, max(concurrencies)) as (generator, session):
        await generator.closed_loop(session, max(concurrencies), min(window_s, 1.0))  # warm-up
        for concurrency in concurrencies:
            before = await asyncio.to_thread(batch_histogram, target.url, model)
            result = await settle(
                lambda _i, c=concurrency: generator.closed_loop(session, c, window_s),
                max_windows=6,
            )
            after = await asyncio.to_thread(batch_histogram, target.url, model)
            executions = after.get("count", 0.0) - before.get("count", 0.0)
            mean = (after["sum"] - before["sum"]) / executions if executions else None
            results.append((concurrency, result, mean))
    return results


def measure(
    report: Report, target: Target | str, model: str, config: str, concurrencies: list[int],
    window_s: float,
) -> None:  # fmt: skip
    target = Target(target) if isinstance(target, str) else target
    for concurrency, result, mean_batch in asyncio.run(
        closed_loops(target, model, concurrencies, window_s)
    ):
        m = Measurement(model, config, concurrency, result.throughput, result.percentile(50) * 1000,
                        result.percentile(99) * 1000, result.stable, result.failures,
                        mean_batch)  # fmt: skip
        report.measurements.append(m)
        batch = f" batch {mean_batch:5.1f}" if mean_batch is not None else ""
        print(f"  {model:7} {config:28} C={concurrency:<3} {m.throughput:9.1f} req/s "
              f"p50 {m.p50_ms:8.2f} ms p99 {m.p99_ms:8.2f} ms{batch}"
              f"{'' if m.stable else ' (unsettled)'}"
              f"{f' FAILURES {m.failures}' if m.failures else ''}",
              flush=True)  # fmt: skip


def head_to_head(
    report: Report, contenders: dict[str, Target], model: str, concurrency: int,
    rounds: int, window_s: float,
) -> None:  # fmt: skip
    """Alternate windows between servers (A B C ... A B C ...) so drift on a shared machine
    hits all alike; keep each one's median throughput and p50."""

    async def go() -> dict[str, list[Result]]:
        runs: dict[str, list[Result]] = {name: [] for name in contenders}
        async with AsyncExitStack() as stack:
            loaded = {}
            for name, target in contenders.items():
                generator, session = await stack.enter_async_context(
                    loading(target, model, concurrency)
                )
                await generator.closed_loop(session, concurrency, 0.5)  # warm-up
                loaded[name] = (generator, session)
            for _ in range(rounds):
                for name, (generator, session) in loaded.items():
                    runs[name].append(await generator.closed_loop(session, concurrency, window_s))
        return runs

    for name, results in asyncio.run(go()).items():
        row = {
            "config": name,
            "concurrency": concurrency,
            "rounds": [round(r.throughput, 1) for r in results],
            "median_rps": statistics.median(r.throughput for r in results),
            "median_p50_ms": statistics.median(r.percentile(50) for r in results) * 1000,
            "failures": sum(r.failures for r in results),
        }
        report.head_to_head.append(row)
        print(f"  {name:32} median {row['median_rps']:9.1f} req/s  rounds {row['rounds']}",
              flush=True)  # fmt: skip


def batch_histogram(url: str, model: str) -> dict[str, float]:
    """The model's batch_size histogram from /metrics: cumulative bucket counts by `le`,
    plus `sum` and `count`."""
    text = httpx.get(f"{url}/metrics").text
    found: dict[str, float] = {}
    for match in re.finditer(r"^batchserve_batch_size_(bucket|sum|count)\{(.*)\} (\S+)$", text,
                             re.MULTILINE):  # fmt: skip
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if labels.get("model") != model:
            continue
        key = labels["le"] if match[1] == "bucket" else match[1]
        found[key] = found.get(key, 0.0) + float(match[3])
    return found


# -- the run ------------------------------------------------------------------------------


def run(out: Path, quick: bool) -> Report:
    report = Report()
    scale = 0.5 if quick else 1.0
    work = Path(tempfile.mkdtemp(prefix="batchserve-bench-"))
    try:
        batching_repo, plain_repo = work / "batching", work / "no-batching"
        build_repository(batching_repo, batching=True)
        build_repository(plain_repo, batching=False)
        split_repo = work / "split"
        build_repository(split_repo, batching=True, split_threads=True)
        for case in MODELS:
            path = batching_repo / case.name / "1" / "model.onnx"
            print(f"raw ONNX Runtime: {case.name}", flush=True)
            report.raw[case.name] = raw_onnxruntime(path, quick)

        print("batchserve, dynamic batching", flush=True)
        with batchserve(batching_repo) as server:
            url = server.url
            for case in MODELS:
                levels, window_s = list(case.concurrencies), case.window_s * scale
                measure(report, url, case.name, "batchserve batching (JSON)", levels, window_s)
                report.batch_histograms[case.name] = batch_histogram(url, case.name)
                measure(report, Target(url, binary=True), case.name,
                        "batchserve batching (binary)", levels, window_s)  # fmt: skip
                measure(report, Target(url, grpc=server.grpc_target), case.name,
                        "batchserve batching (gRPC raw)", levels, window_s)  # fmt: skip
        print("batchserve, dynamic batching, N 1-thread instances", flush=True)
        with batchserve(split_repo) as server:
            for case in MODELS:
                if case.threads == 1:
                    continue
                levels, window_s = list(case.concurrencies), case.window_s * scale
                config = f"batchserve batching {case.threads}x1 thread (binary)"
                measure(report, Target(server.url, binary=True), case.name, config, levels,
                        window_s)  # fmt: skip
        print("batchserve, no batching", flush=True)
        with batchserve(plain_repo) as server:
            for case in MODELS:
                levels, window_s = list(case.concurrencies), case.window_s * scale
                measure(report, server.url, case.name, "batchserve no batching (JSON)", levels,
                        window_s)  # fmt: skip
        for case in MODELS:
            print(f"hand-written FastAPI endpoint: {case.name}", flush=True)
            env = {"BASELINE_MODEL": str(batching_repo / case.name / "1" / "model.onnx")}
            app = "load_tests.baselines.handwritten:app"
            levels, window_s = list(case.concurrencies), case.window_s * scale
            with external_server(uvicorn(app), env, f"/v2/models/{case.name}") as url:
                measure(report, url, case.name, "hand-written FastAPI", levels, window_s)
        print("HTTP ceiling (constant endpoints, digits-shaped)", flush=True)
        ceilings = [
            ("constant FastAPI (uvicorn)", uvicorn("load_tests.baselines.constant:app")),
            ("constant ASGI (uvicorn)", uvicorn("load_tests.baselines.constant:asgi")),
            ("constant ASGI (granian)", granian("load_tests.baselines.constant:asgi")),
        ]
        for config, command in ceilings:
            if command is None:
                report.notes.append(f"{config}: granian is not installed; not measured")
                continue
            with external_server(command, {}, "/v2/models/digits") as url:
                measure(report, url, "digits", config, [1, 64, 128], 2.0 * scale)

        print("head to head, digits at C=64, alternating windows", flush=True)
        with ExitStack() as stack:
            ours = stack.enter_context(batchserve(batching_repo))
            env = {"BASELINE_MODEL": str(batching_repo / "digits" / "1" / "model.onnx")}
            contenders = {
                "batchserve batching (binary)": Target(ours.url, binary=True),
                "batchserve batching (gRPC raw)": Target(ours.url, grpc=ours.grpc_target),
                "batchserve batching (JSON)": Target(ours.url),
                "hand-written FastAPI (JSON)": Target(stack.enter_context(external_server(
                    uvicorn("load_tests.baselines.handwritten:app"), env, "/v2/models/digits"))),
            }  # fmt: skip
            for config, command in ceilings:
                if command is not None:
                    url = stack.enter_context(external_server(command, {}, "/v2/models/digits"))
                    contenders[config] = Target(url)
            head_to_head(report, contenders, "digits", 64, 3 if quick else 5, 2.0 * scale)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out, MODELS)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    parser.add_argument("--quick", action="store_true", help="shorter windows (a smoke run)")
    args = parser.parse_args()
    run(args.out, args.quick)
    print(f"\nreport: {args.out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
