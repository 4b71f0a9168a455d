"""The GPU check's three measurements (load_tests/gpu/check.py): correctness against ONNX
Runtime on the CPU, raw ONNX Runtime per batch size on the device, and the served p50 at
concurrency 1 and saturation sweep, with batching on and off."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from load_tests.gpu.models import (
    DIGITS,
    ROOT,
    SEQUENCE,
    Settings,
    binary_request,
    decode,
    digits_rows,
    load_request,
    minilm_reference,
    token_feeds,
)
from load_tests.loadgen import BINARY_HEADER, LoadGenerator, PreparedRequest, client_session

# -- 1. correctness --------------------------------------------------------------------


async def send_all(
    url: str, model: str, requests: list[PreparedRequest]
) -> list[dict[str, np.ndarray]]:
    """All requests at once (so the server batches them); their outputs in order."""
    async with client_session(len(requests)) as http:

        async def one(request: PreparedRequest) -> dict[str, np.ndarray]:
            async with http.post(f"{url}/v2/models/{model}/infer", data=request.body,
                                 headers=request.headers) as response:  # fmt: skip
                payload = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{model}: HTTP {response.status}: {payload[:300]!r}")
                return decode(payload, response.headers.get(BINARY_HEADER))

        return list(await asyncio.gather(*(one(r) for r in requests)))


def check_digits(url: str) -> dict[str, Any]:
    x = digits_rows()
    cpu = ort.InferenceSession(str(DIGITS / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    want_labels, want_probs = cpu.run(["label", "probabilities"], {"input": x})
    requests = [
        binary_request({"input": x[i : i + 1]}, ["label", "probabilities"]) for i in range(len(x))
    ]
    got = asyncio.run(send_all(url, "digits", requests))
    probs = np.concatenate([g["probabilities"] for g in got])
    labels = np.concatenate([g["label"] for g in got])
    max_abs = float(np.abs(probs - want_probs).max())
    agreement = float((labels == want_labels).mean())
    return {"rows": len(x), "max_abs_diff": max_abs, "label_agreement": agreement,
            "pass": max_abs <= 1e-3 and agreement >= 0.997}  # fmt: skip


def check_minilm(url: str, settings: Settings) -> dict[str, Any]:
    reference = minilm_reference(settings)
    cpu = ort.InferenceSession(
        str(settings.minilm / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    requests, want = [], []
    for i, length in enumerate(reference["lengths"].tolist()):
        feeds = token_feeds(reference, [i], int(length))  # each at its own length
        requests.append(binary_request(feeds, ["sentence_embedding"]))
        want.append(cpu.run(["sentence_embedding"], feeds)[0][0])
    got = asyncio.run(send_all(url, "minilm", requests))
    served = np.stack([g["sentence_embedding"][0] for g in got])
    wanted = np.stack(want)
    cosine = (served * wanted).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(wanted, axis=1)
    )
    encode = reference["embeddings"]
    vs_encode = (served * encode).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(encode, axis=1)
    )
    return {"rows": len(requests), "min_cosine_vs_cpu": float(cosine.min()),
            "max_abs_diff": float(np.abs(served - wanted).max()),
            "min_cosine_vs_encode": float(vs_encode.min()),
            "pass": float(cosine.min()) >= 0.9995}  # fmt: skip


# -- 2. raw ONNX Runtime ----------------------------------------------------------------


def raw_onnxruntime(model: str, settings: Settings) -> list[dict[str, Any]]:
    """Samples/s per batch size on the device, run as the server runs them ("as served":
    app.runtime.OnnxInstance, which binds I/O on GPUs) and through plain session.run."""
    from app.runtime import InstanceOptions, OnnxInstance

    path = (DIGITS if model == "digits" else settings.minilm) / "1" / "model.onnx"
    threads = 1 if settings.device.startswith("cuda") else 2
    runners = {
        "as served": OnnxInstance(path, settings.device, threads=threads, index=0),
        "session.run": OnnxInstance(
            path,
            settings.device,
            threads=threads,
            index=0,
            options=InstanceOptions(io_binding=False),
        ),
    }
    reference = None if model == "digits" else minilm_reference(settings)
    rows = []
    for batch in settings.batch_sizes:
        if model == "digits":
            x = digits_rows()
            feeds = {"input": np.ascontiguousarray(np.resize(x, (batch, x.shape[1])))}
        else:
            assert reference is not None
            picks = [i % len(reference["lengths"]) for i in range(batch)]
            feeds = token_feeds(reference, picks, SEQUENCE)
        for mode, runner in runners.items():
            run = runner.run
            for _ in range(3):
                run(feeds)  # warm-up: allocations, cuDNN/cuBLAS choices
            times = []
            deadline = time.perf_counter() + settings.raw_s
            while time.perf_counter() < deadline or len(times) < 5:
                started = time.perf_counter()
                run(feeds)
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            rows.append({"mode": mode, "batch": batch, "latency_ms": median * 1000,
                         "samples_per_s": batch / median, "runs": len(times)})  # fmt: skip
    return rows


# -- 3. served --------------------------------------------------------------------------


def load_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One load generator process's closed loop (run with --load-worker)."""
    settings = Settings("cpu", [], Path(spec["minilm"]), 0, [], 1, [], 0, 0)
    request = load_request(spec["kind"], settings)

    async def go() -> dict[str, Any]:
        async with client_session(spec["concurrency"]) as http:
            generator = LoadGenerator(spec["url"], spec["model"], request)
            if spec["warm_s"]:
                await generator.closed_loop(http, spec["concurrency"], spec["warm_s"])
            result = await generator.closed_loop(http, spec["concurrency"], spec["seconds"])
        return {"ok": result.ok, "failures": result.failures, "seconds": result.seconds,
                "latencies_ms": [round(v * 1000, 4) for v in result.ok_latencies_s]}  # fmt: skip

    return asyncio.run(go())


def closed_loop(url: str, model: str, kind: str, concurrency: int, settings: Settings,
                warm_s: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """`concurrency` requests in flight from up to `processes` load generator processes
    (one Python process alone tops out below what a GPU serves)."""
    processes = max(1, min(settings.processes, concurrency // 8 or 1))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "load_tests.gpu.check", "--load-worker", json.dumps({
                "url": url, "model": model, "kind": kind, "concurrency": share,
                "seconds": settings.window_s, "warm_s": warm_s, "minilm": str(settings.minilm)})],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for share in shares
    ]  # fmt: skip
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=settings.window_s + warm_s + 120)
        if worker.returncode != 0:
            raise RuntimeError(f"load generator failed ({worker.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    latencies = [v for r in results for v in r["latencies_ms"]]
    throughput = sum(r["ok"] / r["seconds"] for r in results if r["seconds"])
    return {"concurrency": concurrency, "processes": processes, "throughput_rps": throughput,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
            "failures": sum(r["failures"] for r in results)}  # fmt: skip


def batch_counts(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the model's batch_size histogram."""
    text = httpx.get(f"{url}/metrics").text
    found = {"sum": 0.0, "count": 0.0}
    for kind, labels, value in re.findall(
        r"^batchserve_batch_size_(sum|count)\{(.*)\} (\S+)$", text, re.MULTILINE
    ):
        if f'model="{model}"' in labels:
            found[kind] += float(value)
    return found["sum"], found["count"]


def served(url: str, model: str, settings: Settings, deadline: float) -> dict[str, dict[str, Any]]:
    """p50 at concurrency 1, then the saturation sweep, with batching on and off."""
    out: dict[str, dict[str, Any]] = {}
    warm_s = min(0.5, settings.window_s)
    for mode, name in (("on", model), ("off", f"{model}_nobatch")):
        entry: dict[str, Any] = {
            "c1": closed_loop(url, name, model, 1, settings, warm_s=min(1.0, settings.window_s))
        }
        sweep = []
        for concurrency in settings.concurrencies:
            if time.monotonic() > deadline:
                entry["cut_short"] = True
                break
            before = batch_counts(url, name)
            point = closed_loop(url, name, model, concurrency, settings, warm_s=warm_s)
            after = batch_counts(url, name)
            executions = after[1] - before[1]
            point["mean_batch"] = (after[0] - before[0]) / executions if executions else None
            sweep.append(point)
            batch = point["mean_batch"] or 0.0
            print(f"    {name:16} C={concurrency:<4} {point['throughput_rps']:10.1f} req/s  "
                  f"p50 {point['p50_ms']:7.2f} ms  batch {batch:5.1f}", flush=True)  # fmt: skip
        entry["sweep"] = sweep
        entry["best"] = max(sweep, key=lambda p: p["throughput_rps"]) if sweep else None
        out[mode] = entry
    return out
