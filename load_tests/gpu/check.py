"""The GPU check: batchserve on cuda:0 against raw ONNX Runtime on the same GPU.

Serves digits and the text model (models/minilm v1, fp32) on cuda:0, each twice: batching on
(dynamic batching up to 64, work-conserving) and off (max_batch_size = 0, each request alone).
Then, in one run:
  1. correctness: every digits test row and every text reference row, sent as concurrent
     1-sample requests (so they share batches), against ONNX Runtime on the CPU;
  2. raw ONNX Runtime in this process on the same device, per batch size, through the same
     session setup the server uses (app.runtime.OnnxInstance, I/O binding on GPUs) and with
     plain session.run: samples/s and the best batch size;
  3. served: p50 at concurrency 1 and saturation throughput (the best of a concurrency
     sweep, load from several load generator processes) with batching on and off;
and prints one table with its bars (batching on >= 3x off on digits at
saturation; served >= 80% of raw ONNX Runtime at its best batch).

    python -m load_tests.gpu.check                         # on a GPU machine (check.sh)
    python -m load_tests.gpu.check --cpu --quick           # the same flow on the CPU, small

`--cpu` runs every step with device "cpu" (the dry run that tests/integration runs), so
what only a GPU can show is what is left for the GPU run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnxruntime as ort

from load_tests.gpu.measure import (
    check_digits,
    check_minilm,
    load_worker,
    raw_onnxruntime,
    served,
)
from load_tests.gpu.models import ROOT, Settings, write_repository
from load_tests.gpu.report import ModelResult, criteria, table
from testing.server_process import ServerProcess

# -- the run ----------------------------------------------------------------------------


def environment(settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "device": settings.device,
        "python": sys.version.split()[0],
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
    except Exception as exc:  # no NVML: the CPU dry run, or a broken driver
        info["gpu"] = f"none ({type(exc).__name__})"
    return info


def run(settings: Settings) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + settings.budget_s
    report: dict[str, Any] = {"environment": environment(settings), "models": []}
    print(f"environment: {json.dumps(report['environment'])}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="batchserve-gpu-check-"))
    results: list[ModelResult] = []
    try:
        write_repository(work, settings)
        server = ServerProcess(work)
        try:
            ready = next(
                (
                    line
                    for line in server.log.splitlines()
                    if "batchserve " in line and " on http" in line
                ),
                "",
            )
            print(f"server: {ready[ready.find('batchserve ') :]}", flush=True)
            if "NOT ready" in ready:
                raise RuntimeError(f"models did not load:\n{server.log[-4000:]}")
            if settings.device.startswith("cuda") and "CPUExecutionProvider (asked" in ready:
                raise RuntimeError("a model fell back to the CPU")
            for model in settings.models:
                result = ModelResult(model)
                results.append(result)
                print(f"{model}: correctness", flush=True)
                result.correctness = (
                    check_digits(server.url)
                    if model == "digits"
                    else check_minilm(server.url, settings)
                )
                print(f"    {json.dumps(result.correctness)}", flush=True)
                print(f"{model}: raw ONNX Runtime on {settings.device}", flush=True)
                result.raw = raw_onnxruntime(model, settings)
                for mode in ("as served", "session.run"):
                    best = result.best_raw(mode)
                    assert best is not None
                    rate = best["samples_per_s"]
                    print(f"    {mode:12} best batch {best['batch']:4} {rate:12.0f} samples/s")
                print(f"{model}: served", flush=True)
                result.served = served(server.url, model, settings, deadline)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["models"] = [asdict(r) for r in results]
    report["seconds"] = time.monotonic() - started
    report["table"] = table(results, settings)
    report["criteria"] = criteria(results)
    return report


def settings_from(args: argparse.Namespace) -> Settings:
    minilm = Path(args.minilm)
    models = [m for m in args.models.split(",") if m]
    if "minilm" in models and not (minilm / "1" / "model.onnx").exists():
        raise SystemExit(f"{minilm}/1/model.onnx is missing (make text-model); or --models digits")
    quick = args.quick
    return Settings(
        device="cpu" if args.cpu else args.device,
        models=models,
        minilm=minilm,
        window_s=args.window or (0.3 if quick else 4.0),
        concurrencies=[8] if quick else [16, 64, 256],
        processes=1 if quick else args.processes,
        batch_sizes=[1, 8] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256],
        raw_s=0.1 if quick else 0.5,
        budget_s=args.budget_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--cpu", action="store_true", help="the same flow on the CPU (dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny windows, one concurrency")
    parser.add_argument("--models", default="digits,minilm")
    parser.add_argument("--minilm", default=str(ROOT / "models" / "minilm"))
    parser.add_argument("--window", type=float, help="seconds per load window")
    parser.add_argument("--processes", type=int, default=6, help="load generator processes")
    parser.add_argument("--budget-s", type=float, default=360.0, help="stop sweeping after this")
    parser.add_argument("--out", type=Path, help="write the whole report as JSON here")
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_worker:
        print(json.dumps(load_worker(json.loads(args.load_worker))), flush=True)
        return 0
    report = run(settings_from(args))
    print("\n" + report["table"] + "\n")
    for name, ok in report["criteria"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"(whole check: {report['seconds']:.0f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    correct = all(r["correctness"].get("pass") for r in report["models"])
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
