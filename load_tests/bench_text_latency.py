"""Low-load latency against saturation on the text model, one 128-token sentence a request:
C=1 p50 and C=32 throughput of batchserve (minilm v1 as shipped, tuned at load; and with
layouts fixed in its config: two 1-thread instances, one 2-thread spinning instance, and
two 1-thread instances beside one 2-thread spinning low-load-only instance) against the
hand-written FastAPI endpoint, raw ONNX Runtime at batch 1 with its default session options,
the floor: the same session behind HTTP and a thread hand-off each way, nothing else, and
HTTP alone: that session run on the server's event loop (C=1 only), in alternating rounds of
one run (load_tests/report/TEXT_LATENCY.md).
The servers get the same JSON request with token ids and answer the sentence embedding.

    python -m load_tests.bench_text_latency --out load_tests/report
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from load_tests.bench import external_server, uvicorn
from load_tests.bench_text import floor_server
from load_tests.loadgen import LoadGenerator, PreparedRequest, client_session
from testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MINILM = ROOT / "models" / "minilm"
TOKENS = 128


def feeds() -> dict[str, np.ndarray]:
    """The reference sentence truncated at 128 tokens (row 23), as token ids."""
    with np.load(MINILM / "reference.npz") as data:
        row = int(np.flatnonzero(data["lengths"] == TOKENS)[0])
        return {
            n: data[n][row : row + 1] for n in ("input_ids", "attention_mask", "token_type_ids")
        }


def request(inputs: dict[str, np.ndarray]) -> PreparedRequest:
    body = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ],
        "outputs": [{"name": "sentence_embedding"}],
    }
    return PreparedRequest(
        json.dumps(body).encode(), {"Content-Type": "application/json"}, 1, False
    )


#: Layouts fixed in a copy of minilm's config: name -> (what the report calls it, lines).
FIXED = {
    "minilm_2x1": ("2x1 (what tuning chose before low-load instances)",
                   "[[instances]]\ncount = 2\nthreads = 1\n"),
    "minilm_1x2": ("1x2, spinning", "[[instances]]\ncount = 1\nthreads = 2\nspinning = true\n"),
    "minilm_low_load_spin": (
        "2x1 + a low-load-only 1x2, spinning",
        "[[instances]]\ncount = 2\nthreads = 1\n"
        "[[instances]]\ncount = 1\nthreads = 2\nlow_load_only = true\nspinning = true\n",
    ),
}  # fmt: skip
SATURATION = 32
#: The servers measured at C=1 only: not batchserve.
BASELINES = ("http_alone", "floor", "handwritten")


def fixed_layout_copies(repository: Path) -> None:
    """models/minilm v1 copied once per FIXED layout, its config plus that layout (copied:
    the server refuses a tokenizer file linked from outside the model)."""
    config = (MINILM / "config.toml").read_text(encoding="utf-8")
    for name, (_, instances) in FIXED.items():
        target = repository / name
        shutil.copytree(MINILM, target, ignore=shutil.ignore_patterns("2", "3", "config.toml"))
        (target / "config.toml").write_text(config + "\n" + instances, encoding="utf-8")


def raw_p50_ms(inputs: dict[str, np.ndarray], seconds: float) -> float:
    session = ort.InferenceSession(
        str(MINILM / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )  # ONNX Runtime's default options, as a user's first script has them
    for _ in range(5):
        session.run(["sentence_embedding"], inputs)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        began = time.perf_counter()
        session.run(["sentence_embedding"], inputs)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


async def served(
    url: str, model: str, body: PreparedRequest, concurrency: int, seconds: float
) -> tuple[float, float]:
    """(p50 ms, requests/s) of a closed loop at `concurrency`."""
    load = LoadGenerator(url, model, body)
    async with client_session(concurrency) as http:
        result = await load.closed_loop(http, concurrency, seconds)
    assert set(result.statuses) == {200}, result.statuses
    return statistics.median(result.ok_latencies_s) * 1000, result.statuses[200] / result.seconds


def served_tuning(url: str) -> str:
    """What tuning chose for minilm v1, as its metadata says: `2x1 + low-load 1x2, spinning`
    (the spinning of the low-load instance), `1x2, spinning`, `2x1`."""
    import httpx

    tuning = httpx.get(f"{url}/v2/models/minilm/versions/1").json()["parameters"]["tuning"]
    spins = tuning.get("low_load_spinning" if tuning.get("low_load_threads") else "spinning")
    return f"{tuning.get('layout') or tuning['source']}{', spinning' if spins else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if not (MINILM / "1" / "model.onnx").exists():
        raise SystemExit("models/minilm is not built: make text-model")
    inputs = feeds()
    body = request(inputs)
    paths = ("raw", "http_alone", "floor", "minilm", *FIXED, "handwritten")
    p50: dict[str, list[float]] = {name: [] for name in paths}
    rate: dict[str, list[float]] = {name: [] for name in paths if name not in ("raw", *BASELINES)}
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work) / "models"
        repository.mkdir()
        (repository / "minilm").symlink_to(MINILM.resolve(), target_is_directory=True)
        fixed_layout_copies(repository)
        feed = Path(work) / "feed.npz"
        np.savez(feed, **inputs)
        server = ServerProcess(repository, env={"BATCHSERVE_CACHE_DIR": str(Path(work) / "c")})
        env = {"BASELINE_MODEL": str(MINILM / "1" / "model.onnx")}
        app = "load_tests.baselines.handwritten:app"
        threads = os.cpu_count() or 1  # raw ONNX Runtime's default, spinning included
        try:
            with (
                external_server(uvicorn(app), env, "/v2/models/minilm") as handwritten,
                floor_server(feed, threads, spinning=True) as floor,
                floor_server(feed, threads, spinning=True, inline=True) as http_alone,
            ):
                baselines = {"handwritten": handwritten, "floor": floor, "http_alone": http_alone}
                for index in range(args.rounds):
                    shift = index % len(paths)
                    for name in paths[shift:] + paths[:shift]:
                        if name == "raw":
                            p50[name].append(raw_p50_ms(inputs, args.seconds))
                        elif name in BASELINES:
                            once = served(baselines[name], "minilm", body, 1, args.seconds)
                            p50[name].append(asyncio.run(once)[0])
                        else:
                            model = f"{name}/versions/1"
                            once = served(server.url, model, body, 1, args.seconds)
                            p50[name].append(asyncio.run(once)[0])
                            full = served(server.url, model, body, SATURATION, args.seconds)
                            rate[name].append(asyncio.run(full)[1])
                        print(f"round {index + 1} {name}: p50 {p50[name][-1]:.2f} ms", flush=True)
            tuning = served_tuning(server.url)
        finally:
            server.stop()
    write_report(args, p50, rate, tuning)


def write_report(
    args: argparse.Namespace, p50: dict[str, list[float]], rate: dict[str, list[float]],
    tuning: str,
) -> None:  # fmt: skip
    median = {name: statistics.median(values) for name, values in p50.items()}
    # Each path against raw within its own round: the rounds drift by several ms.
    paired = {
        name: statistics.median(a - b for a, b in zip(values, p50["raw"], strict=True))
        for name, values in p50.items()
    }
    throughput = {name: statistics.median(values) for name, values in rate.items()}
    data: dict[str, Any] = {
        "rounds_p50_ms": p50, "rounds_req_per_s": rate, "median_p50_ms": median,
        "median_req_per_s": throughput, "paired_vs_raw_ms": paired, "tuning": tuning,
        "python": sys.version,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_latency.json").write_text(json.dumps(data, indent=2) + "\n")
    labels = {
        "raw": "raw ONNX Runtime, batch 1, default session options",
        "http_alone": "HTTP alone: that session run on the server's event loop, no hand-off "
        "(baselines/floor.py, BASELINE_INLINE=1)",
        "floor": "floor: that session behind HTTP and a thread hand-off each way "
        "(baselines/floor.py)",
        "minilm": f"batchserve, shipped config, tuned at load to {tuning}",
        **{name: f"batchserve, config fixing {label}" for name, (label, _) in FIXED.items()},
        "handwritten": "hand-written FastAPI endpoint (JSON)",
    }
    lines = [
        "# Text model: concurrency 1 against saturation, 128 tokens "
        "(load_tests/bench_text_latency.py)",
        "",
        f"Medians of {args.rounds} alternating rounds of {args.seconds:g} s per measurement, "
        "one run; against raw, the median of each round's own difference (a round's "
        f"measurements run seconds apart, the rounds drift by several ms); C={SATURATION} "
        "closed loop for req/s. The floor reads the body and "
        "answers a constant: floor - raw is what HTTP and the hand-offs alone cost here, "
        "under every served path; HTTP alone leaves out the hand-offs too (it blocks its "
        "event loop for the whole inference, which no server may do).",
        "",
        f"| path | C=1 p50 ms | vs raw ONNX Runtime | C={SATURATION} req/s |",
        "|---|---:|---:|---:|",
    ]
    for name, label in labels.items():
        served_rate = f"{throughput[name]:.1f}" if name in throughput else ""
        lines.append(f"| {label} | {median[name]:.2f} | {paired[name]:+.2f} ms | {served_rate} |")
    text = "\n".join(lines) + "\n"
    (args.out / "TEXT_LATENCY.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
