"""Low-load latency on the text model: at concurrency 1, one 128-token sentence a request,
batchserve (minilm v1 as shipped, tuned at load; and the same with one 2-thread spinning
instance fixed in its config) against the hand-written FastAPI endpoint and raw ONNX Runtime
at batch 1 with its default session options, in alternating rounds of one run
(load_tests/report/TEXT_LATENCY.md). The servers get the same JSON request with token ids
and answer the sentence embedding only.

    python -m load_tests.bench_text_latency --out load_tests/report
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from load_tests.loadgen import LoadGenerator, PreparedRequest, client_session
from load_tests.server_process import ServerProcess

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


def fixed_layout_copy(repository: Path) -> None:
    """models/minilm v1 copied as `minilm_1x2`, its config plus one 2-thread spinning
    instance (copied: the server refuses a tokenizer file linked from outside the model)."""
    target = repository / "minilm_1x2"
    shutil.copytree(MINILM, target, ignore=shutil.ignore_patterns("2", "3", "config.toml"))
    config = (MINILM / "config.toml").read_text(encoding="utf-8")
    instance = '\n[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 2\nspinning = true\n'
    (target / "config.toml").write_text(config + instance, encoding="utf-8")


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


async def served_p50_ms(url: str, model: str, body: PreparedRequest, seconds: float) -> float:
    load = LoadGenerator(url, model, body)
    async with client_session(1) as http:
        result = await load.closed_loop(http, 1, seconds)
    assert set(result.statuses) == {200}, result.statuses
    return statistics.median(result.ok_latencies_s) * 1000


def served_tuning(url: str) -> str:
    """What tuning chose for minilm v1, as its metadata says."""
    import httpx

    tuning = httpx.get(f"{url}/v2/models/minilm/versions/1").json()["parameters"]["tuning"]
    spinning = " spinning" if tuning.get("spinning") else ""
    return f"{tuning.get('layout') or tuning['source']}{spinning}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    if not (MINILM / "1" / "model.onnx").exists():
        raise SystemExit("models/minilm is not built: make text-model")
    inputs = feeds()
    body = request(inputs)
    paths = ("raw", "batchserve", "batchserve_1x2", "handwritten")
    results: dict[str, list[float]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work) / "models"
        repository.mkdir()
        (repository / "minilm").symlink_to(MINILM.resolve(), target_is_directory=True)
        fixed_layout_copy(repository)
        server = ServerProcess(repository, env={"BATCHSERVE_CACHE_DIR": str(Path(work) / "c")})
        env = {"BASELINE_MODEL": str(MINILM / "1" / "model.onnx")}
        app = "load_tests.baselines.handwritten:app"
        try:
            with external_server(uvicorn(app), env, "/v2/models/minilm") as handwritten:
                for index in range(args.rounds):
                    shift = index % len(paths)
                    for name in paths[shift:] + paths[:shift]:
                        if name == "raw":
                            value = raw_p50_ms(inputs, args.seconds)
                        else:
                            url, model = {
                                "batchserve": (server.url, "minilm/versions/1"),
                                "batchserve_1x2": (server.url, "minilm_1x2/versions/1"),
                                "handwritten": (handwritten, "minilm"),
                            }[name]
                            value = asyncio.run(served_p50_ms(url, model, body, args.seconds))
                        results[name].append(value)
                        print(f"round {index + 1} {name}: p50 {value:.2f} ms", flush=True)
            tuning = served_tuning(server.url)
        finally:
            server.stop()
    median = {name: statistics.median(values) for name, values in results.items()}
    data: dict[str, Any] = {
        "rounds": results,
        "median_p50_ms": median,
        "tuning": tuning,
        "python": sys.version,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_latency.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Text model at concurrency 1, 128 tokens (load_tests/bench_text_latency.py)",
        "",
        f"p50 latency, median of {args.rounds} alternating rounds of {args.seconds:g} s:",
        "",
        "| path | p50 ms | vs raw ONNX Runtime |",
        "|---|---:|---:|",
    ]
    for name, label in (("raw", "raw ONNX Runtime, batch 1, default session options"),
                        ("batchserve", f"batchserve, shipped config, tuned at load to {tuning}"),
                        ("batchserve_1x2", "batchserve, config fixing 1x2 with spinning"),
                        ("handwritten", "hand-written FastAPI endpoint (JSON)")):  # fmt: skip
        delta = median[name] - median["raw"]
        lines.append(f"| {label} | {median[name]:.2f} | {delta:+.2f} ms |")
    text = "\n".join(lines) + "\n"
    (args.out / "TEXT_LATENCY.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
