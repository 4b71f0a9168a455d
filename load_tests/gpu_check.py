"""The device check (issue 10): batchserve on cuda:0 against raw ONNX Runtime on the same GPU.

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
and prints one table with the issue's criteria (batching on >= 3x off on digits at
saturation; served >= 80% of raw ONNX Runtime at its best batch).

    python -m load_tests.gpu_check                         # on a GPU machine (gpu_check.sh)
    python -m load_tests.gpu_check --cpu --quick           # the same flow on the CPU, small

`--cpu` runs every step with device "cpu" (the dry run that tests/integration runs), so
what only a GPU can show is what is left for the GPU run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from load_tests.loadgen import BINARY_HEADER, LoadGenerator, PreparedRequest, client_session
from load_tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"
MAX_BATCH = 64
SEQUENCE = 128


@dataclass
class Settings:
    device: str
    models: list[str]
    minilm: Path
    window_s: float
    concurrencies: list[int]
    processes: int
    batch_sizes: list[int]
    raw_s: float
    budget_s: float


@dataclass
class ModelResult:
    model: str
    correctness: dict[str, Any] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def best_raw(self, mode: str | None = None) -> dict[str, Any] | None:
        """The fastest raw row (of `mode`, or of both ways of running)."""
        rows = [r for r in self.raw if mode is None or r["mode"] == mode]
        return max(rows, key=lambda r: r["samples_per_s"]) if rows else None


# -- the models ------------------------------------------------------------------------


def write_repository(root: Path, settings: Settings) -> None:
    """Each model twice, batching on and off, with one worker on the device."""
    threads = 1 if settings.device.startswith("cuda") else 2
    instance = f'[[instances]]\ndevice = "{settings.device}"\ncount = 1\nthreads = {threads}\n'
    for model in settings.models:
        for suffix, max_batch in (("", MAX_BATCH), ("_nobatch", 0)):
            version = root / f"{model}{suffix}" / "1"
            version.mkdir(parents=True)
            config = f"max_batch_size = {max_batch}\n[batching]\nmax_queue_size = 4096\n"
            if model == "digits":
                shutil.copy(DIGITS / "1" / "model.onnx", version / "model.onnx")
            else:
                shutil.copy(settings.minilm / "1" / "model.onnx", version / "model.onnx")
                if max_batch:  # requests of different lengths share batches, as shipped
                    config += "[padding]\ninputs = { input_ids = 0, attention_mask = 0, "
                    config += "token_type_ids = 0 }\nmax_padding_ratio = 0.25\n"
            (version.parent / "config.toml").write_text(config + instance)


def digits_rows() -> np.ndarray:
    return np.load(DIGITS / "data" / "test_x.npy").astype(np.float32)


def minilm_reference(settings: Settings) -> dict[str, np.ndarray]:
    with np.load(settings.minilm / "reference.npz") as data:
        return {name: data[name] for name in data.files}


def token_feeds(
    reference: dict[str, np.ndarray], rows: Sequence[int], length: int
) -> dict[str, np.ndarray]:
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {n: np.ascontiguousarray(reference[n][list(rows), :length]) for n in names}


def binary_request(feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> PreparedRequest:
    """One v2 request with binary tensors both ways."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    inputs, chunks = [], []
    for name, array in feeds.items():
        chunks.append(array.tobytes())
        inputs.append({"name": name, "shape": list(array.shape),
                       "datatype": datatypes[array.dtype],
                       "parameters": {"binary_data_size": len(chunks[-1])}})  # fmt: skip
    header = json.dumps({"inputs": inputs, "outputs": [
        {"name": n, "parameters": {"binary_data": True}} for n in outputs]}).encode()  # fmt: skip
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    rows = next(iter(feeds.values())).shape[0]
    return PreparedRequest(header + b"".join(chunks), headers, rows, True)


def load_request(model: str, settings: Settings) -> PreparedRequest:
    """What the load generators send: one real sample (text: 128 tokens)."""
    if model == "digits":
        return binary_request({"input": digits_rows()[:1]}, ["label", "probabilities"])
    feeds = token_feeds(minilm_reference(settings), [0], SEQUENCE)
    return binary_request(feeds, ["sentence_embedding"])


def decode(payload: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 response (JSON or binary)."""
    numpy = {"FP32": np.float32, "INT64": np.int64}
    if not header_length:
        body = json.loads(payload)
        return {o["name"]: np.array(o["data"], dtype=numpy[o["datatype"]]).reshape(o["shape"])
                for o in body["outputs"]}  # fmt: skip
    size = int(header_length)
    header, offset, result = json.loads(payload[:size]), size, {}
    for o in header["outputs"]:
        length = o["parameters"]["binary_data_size"]
        data = np.frombuffer(payload[offset : offset + length], dtype=numpy[o["datatype"]])
        result[o["name"]] = data.reshape(o["shape"])
        offset += length
    return result


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
            [sys.executable, "-m", "load_tests.gpu_check", "--load-worker", json.dumps({
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


def table(results: list[ModelResult], settings: Settings) -> str:
    lines = [
        f"device {settings.device}; served: one worker, binary tensors, 1 sample a request "
        f"(text: 128 tokens); raw: in-process, same device",
        "",
        "| model | correct | raw best (batch) samples/s | raw b=1 ms | on: sat req/s (C, batch) "
        "| on: p50 C=1 ms | off: sat req/s (C) | off: p50 C=1 ms | on/off | served/raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [table_row(r) for r in results]
    return "\n".join(lines)


def table_row(r: ModelResult) -> str:
    best = r.best_raw()
    one = next((x for x in r.raw if x["mode"] == "as served" and x["batch"] == 1), None)
    on, off = r.served.get("on", {}), r.served.get("off", {})
    on_best, off_best = on.get("best"), off.get("best")
    if not (best and one and on_best and off_best):
        return f"| {r.model} | incomplete: see the log above |"
    ratio = on_best["throughput_rps"] / off_best["throughput_rps"]
    share = on_best["throughput_rps"] / best["samples_per_s"]
    cells = [
        r.model,
        "yes" if r.correctness.get("pass") else "NO",
        f"{best['samples_per_s']:.0f} ({best['batch']})",
        f"{one['latency_ms']:.3f}",
        f"{on_best['throughput_rps']:.0f} ({on_best['concurrency']}, "
        f"{on_best['mean_batch'] or 0:.1f})",
        f"{on['c1']['p50_ms']:.2f}",
        f"{off_best['throughput_rps']:.0f} ({off_best['concurrency']})",
        f"{off['c1']['p50_ms']:.2f}",
        f"{ratio:.2f}x",
        f"{share:.0%}",
    ]
    return "| " + " | ".join(cells) + " |"


def criteria(results: list[ModelResult]) -> dict[str, Any]:
    """The issue's bars: batching on >= 3x off on digits at saturation; served >= 80% of raw
    ONNX Runtime at its best batch (per model); outputs as the CPU's."""
    found: dict[str, Any] = {}
    for r in results:
        on, off = (r.served.get(m, {}).get("best") for m in ("on", "off"))
        best = r.best_raw()
        found[f"{r.model}: outputs match the CPU"] = bool(r.correctness.get("pass"))
        if on and best:
            found[f"{r.model}: served >= 80% of raw best"] = (
                on["throughput_rps"] >= 0.8 * best["samples_per_s"]
            )
        if r.model == "digits" and on and off:
            found["digits: batching on >= 3x off"] = (
                on["throughput_rps"] >= 3 * off["throughput_rps"]
            )
    return found


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
