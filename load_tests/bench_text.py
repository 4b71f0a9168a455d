"""Text embeddings under a realistic length mix: variable-length batching against its limits.

`make bench-text` (after `make text-model`) measures, in one run and interleaved in rounds so
drift on a shared machine hits all alike:
- raw ONNX Runtime on the same sentences pre-sorted by length into ideal batches (no HTTP,
  the least padding possible): the ceiling;
- batchserve serving raw text with length-bucketed padding (the shipped minilm config);
- the same server with padding-blind requests (token ids padded to the model's 128), the
  batching users get when lengths are ignored;
- concurrency 1 at 128 tokens against raw batch-1 at 128 tokens, and against the floor any
  Python server on this stack has (load_tests/baselines/floor.py).
Results go to load_tests/report/TEXT.md and text.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from load_tests.bench import external_server, uvicorn
from load_tests.loadgen import LoadGenerator, PreparedRequest, Result, client_session
from testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "minilm"
MAX_LENGTH = 128
MAX_BATCH = 32
JSON_HEADERS = {"Content-Type": "application/json"}


def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.enable_truncation(MAX_LENGTH)
    tok.no_padding()
    return tok


def length_mix(count: int, seed: int = 0) -> list[int]:
    """Token lengths 8..128, skewed short (median about 24), as search queries and chat
    messages are: 8 * 16**(u**2) for u uniform in [0, 1)."""
    rng = random.Random(seed)
    return [min(MAX_LENGTH, int(8 * 16 ** (rng.random() ** 2))) for _ in range(count)]


def sentences(lengths: list[int], seed: int = 0) -> list[str]:
    """English-like texts of about the given token lengths, from the reference sentences'
    words (shipped with the model), so that the tokenizer sees real words."""
    reference = np.load(MODEL_DIR / "reference.npz", allow_pickle=False)
    words = " ".join(str(s) for s in reference["sentences"]).split()
    rng = random.Random(seed)
    tok = tokenizer()
    texts = []
    for target in lengths:
        chosen: list[str] = []
        while len(tok.encode(" ".join(chosen)).ids) < target:
            chosen.append(rng.choice(words))
        texts.append(" ".join(chosen))
    return texts


def token_arrays(texts: list[str], pad_to: int | None = None) -> list[dict[str, np.ndarray]]:
    """Each text's ids, mask and type ids [1, n] (n its own length, or `pad_to`)."""
    arrays = []
    for encoding in tokenizer().encode_batch(texts):
        n = pad_to or len(encoding.ids)
        row = {name: np.zeros((1, n), dtype=np.int64) for name in
               ("input_ids", "attention_mask", "token_type_ids")}  # fmt: skip
        k = len(encoding.ids)
        row["input_ids"][0, :k] = encoding.ids
        row["attention_mask"][0, :k] = encoding.attention_mask
        row["token_type_ids"][0, :k] = encoding.type_ids
        arrays.append(row)
    return arrays


def session(threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = MODEL_DIR / "1" / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ideal_batches(rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Sorted by length, cut into batches of MAX_BATCH, each padded to its longest."""
    ordered = sorted(rows, key=lambda r: r["input_ids"].shape[1])
    batches = []
    for start in range(0, len(ordered), MAX_BATCH):
        chunk = ordered[start : start + MAX_BATCH]
        longest = chunk[-1]["input_ids"].shape[1]
        batch = {}
        for name in chunk[0]:
            padded = np.zeros((len(chunk), longest), dtype=np.int64)
            for i, row in enumerate(chunk):
                padded[i, : row[name].shape[1]] = row[name][0]
            batch[name] = padded
        batches.append(batch)
    return batches


def raw_throughput(sess: ort.InferenceSession, batches: list[dict[str, np.ndarray]]) -> float:
    """Sentences per second through session.run over the ideal batches (one full pass)."""
    out = ["sentence_embedding"]
    started = time.perf_counter()
    sentences_done = 0
    for batch in batches:
        sess.run(out, batch)
        sentences_done += batch["input_ids"].shape[0]
    return sentences_done / (time.perf_counter() - started)


def text_request(text: str) -> PreparedRequest:
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
        "outputs": [{"name": "sentence_embedding"}],
    }
    return PreparedRequest(json.dumps(body).encode(), JSON_HEADERS, 1, False)


def ids_request(row: dict[str, np.ndarray], binary: bool = False) -> PreparedRequest:
    """Token ids in, the embedding out: JSON, or binary tensors both ways."""
    if not binary:
        inputs = [
            {"name": name, "shape": list(array.shape), "datatype": "INT64",
             "data": array.ravel().tolist()}
            for name, array in row.items()
        ]  # fmt: skip
        body = {"inputs": inputs, "outputs": [{"name": "sentence_embedding"}]}
        return PreparedRequest(json.dumps(body).encode(), JSON_HEADERS, 1, False)
    inputs = [
        {"name": name, "shape": list(array.shape), "datatype": "INT64",
         "parameters": {"binary_data_size": array.nbytes}}
        for name, array in row.items()
    ]  # fmt: skip
    outputs = [{"name": "sentence_embedding", "parameters": {"binary_data": True}}]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(header))}  # fmt: skip
    data = b"".join(np.ascontiguousarray(array).tobytes() for array in row.values())
    return PreparedRequest(header + data, headers, 1, True)


def repository(work: Path, threads: int, max_padding_ratio: float | None) -> Path:
    """The fp32 minilm with its shipped config (or another padding ceiling), one worker of
    `threads` threads."""
    root = work / "repository"
    target = root / "minilm"
    (target / "1").mkdir(parents=True)
    shutil.copy(MODEL_DIR / "1" / "model.onnx", target / "1" / "model.onnx")
    shutil.copy(MODEL_DIR / "tokenizer.json", target / "tokenizer.json")
    config = (MODEL_DIR / "config.toml").read_text()
    config = config.split("[version_policy]")[0]
    if max_padding_ratio is not None:
        config = re.sub(
            r"max_padding_ratio = [0-9.]+", f"max_padding_ratio = {max_padding_ratio}", config
        )
    config += f'\n[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = {threads}\n'
    (target / "config.toml").write_text(config)
    return root


async def closed(
    url: str, requests: list[PreparedRequest], concurrency: int, seconds: float
) -> Result:
    async with client_session(concurrency) as http:
        generator = LoadGenerator(url, "minilm", requests)
        return await generator.closed_loop(http, concurrency, seconds)


@contextmanager
def floor_server(
    feed: Path, threads: int, *, spinning: bool = False, inline: bool = False
) -> Iterator[str]:
    """load_tests/baselines/floor.py serving the fp32 model on one prepared feed (`inline`:
    on its event loop, without the thread hand-offs)."""
    env = {"BASELINE_MODEL": str(MODEL_DIR / "1" / "model.onnx"), "BASELINE_FEED": str(feed),
           "BASELINE_OUTPUT": "sentence_embedding", "BASELINE_THREADS": str(threads),
           "BASELINE_SPINNING": "1" if spinning else "0",
           "BASELINE_INLINE": "1" if inline else "0"}  # fmt: skip
    command = [*uvicorn("load_tests.baselines.floor:app"), "--lifespan", "off"]
    with external_server(command, env, "/") as url:
        yield url


def concurrency_one(
    url: str,
    floor_url: str,
    sess: ort.InferenceSession,
    row: dict[str, np.ndarray],
    text: str,
    count: int,
) -> dict[str, float]:
    """Median latency of one request at a time, `count` of each kind, interleaved one by one
    (in a rotating order) so that the machine's drift hits every kind alike: raw batch-1
    session.run; the floor server; batchserve from token ids (JSON, and binary tensors both
    ways); batchserve from text. A plain
    blocking HTTP/1.1 client with keep-alive, as a single-threaded caller would use."""
    requests = {
        "floor": PreparedRequest(b"{}", JSON_HEADERS, 1, False),
        "ids": ids_request(row),
        "binary": ids_request(row, binary=True),
        "text": text_request(text),
    }
    connections = {
        kind: http.client.HTTPConnection(
            *urlsplit(floor_url if kind == "floor" else url).netloc.split(":")
        )
        for kind in requests
    }

    def post(kind: str) -> None:
        path = "/" if kind == "floor" else "/v2/models/minilm/infer"
        request = requests[kind]
        connections[kind].request("POST", path, request.body, request.headers)
        response = connections[kind].getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{kind}: HTTP {response.status}: {payload[:200]!r}")

    def raw() -> None:
        sess.run(["sentence_embedding"], row)

    calls = {"raw": raw, **{kind: partial(post, kind) for kind in requests}}
    kinds = list(calls)
    for _ in range(5):  # warm-up
        for kind in kinds:
            calls[kind]()
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for index in range(count):
        turn = index % len(kinds)
        for kind in kinds[turn:] + kinds[:turn]:
            started = time.perf_counter()
            calls[kind]()
            times[kind].append(time.perf_counter() - started)
    for connection in connections.values():
        connection.close()
    median = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    return {
        "raw_batch1_ms": median["raw"],
        "floor_p50_ms": median["floor"],
        "ids_p50_ms": median["ids"],
        "binary_p50_ms": median["binary"],
        "text_p50_ms": median["text"],
        "floor_minus_raw_ms": median["floor"] - median["raw"],
        "ids_minus_raw_ms": median["ids"] - median["raw"],
        "binary_minus_raw_ms": median["binary"] - median["raw"],
        "text_minus_raw_ms": median["text"] - median["raw"],
    }


def run(
    rounds: int,
    seconds: float,
    concurrency: int,
    count: int,
    ratio: float | None,
    c1_requests: int = 200,
) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    lengths = length_mix(count)
    texts = sentences(lengths)
    rows = token_arrays(texts)
    own = [r["input_ids"].shape[1] for r in rows]
    batches = ideal_batches(rows)
    sess = session(threads)
    for batch in batches[:3]:
        sess.run(["sentence_embedding"], batch)
    long_text = sentences([MAX_LENGTH], seed=1)[0]
    long_row = token_arrays([long_text])[0]

    work = Path(tempfile.mkdtemp(prefix="batchserve-bench-text-"))
    server = ServerProcess(repository(work, threads, ratio))
    figures: dict[str, list[float]] = {k: [] for k in (
        "raw_sentences_per_s", "bucketed_sentences_per_s", "blind_sentences_per_s",
        "padding_ratio",
    )}  # fmt: skip
    try:
        bucketed = [text_request(t) for t in texts]
        blind = [ids_request(r) for r in token_arrays(texts, pad_to=MAX_LENGTH)]
        asyncio.run(closed(server.url, bucketed, concurrency, 1.0))  # warm-up
        asyncio.run(closed(server.url, blind, concurrency, 1.0))
        for index in range(rounds):
            print(f"round {index + 1}/{rounds}", flush=True)
            figures["raw_sentences_per_s"].append(raw_throughput(sess, batches))
            real = server.metric("batchserve_sequence_positions_total", kind="request")
            pad = server.metric("batchserve_sequence_positions_total", kind="padding")
            result = asyncio.run(closed(server.url, bucketed, concurrency, seconds))
            assert result.failures == 0, result.summary()
            figures["bucketed_sentences_per_s"].append(result.throughput)
            real = server.metric("batchserve_sequence_positions_total", kind="request") - real
            pad = server.metric("batchserve_sequence_positions_total", kind="padding") - pad
            figures["padding_ratio"].append(pad / (real + pad))
            result = asyncio.run(closed(server.url, blind, concurrency, seconds))
            assert result.failures == 0, result.summary()
            figures["blind_sentences_per_s"].append(result.throughput)
            for name, values in figures.items():
                print(f"  {name:26} {values[-1]:10.2f}", flush=True)
        print(f"concurrency 1: {c1_requests} requests each, interleaved", flush=True)
        feed = work / "feed.npz"
        np.savez(feed, **long_row)
        with floor_server(feed, threads) as floor_url:
            single = concurrency_one(server.url, floor_url, sess, long_row, long_text, c1_requests)
        for name, value in single.items():
            print(f"  {name:26} {value:10.2f}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in figures.items()}
    return {
        "threads": threads,
        "concurrency": concurrency,
        "sentences": count,
        "token_lengths": {
            "min": min(own),
            "median": statistics.median(own),
            "max": max(own),
            "mean": statistics.fmean(own),
        },
        "ideal_padding_ratio": 1 - sum(own) / sum(b["input_ids"].size for b in batches),
        "rounds": figures,
        "median": median,
        "bucketed_vs_raw": median["bucketed_sentences_per_s"] / median["raw_sentences_per_s"],
        "bucketed_vs_blind": median["bucketed_sentences_per_s"] / median["blind_sentences_per_s"],
        "concurrency_one": single,
        "c1_requests": c1_requests,
    }


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.json").write_text(json.dumps(results, indent=2))
    m = results["median"]
    one = results["concurrency_one"]
    lengths = results["token_lengths"]
    lines = [
        "# Text embeddings: variable-length batching (all-MiniLM-L6-v2, fp32)",
        "",
        f"{results['sentences']} sentences, token lengths {lengths['min']}..{lengths['max']} "
        f"(median {lengths['median']}, mean {lengths['mean']:.1f}); one request per "
        f"sentence, closed loop at C={results['concurrency']}; one {results['threads']}-thread "
        "worker; medians of rounds that alternate between the configurations.",
        "",
        "| configuration | sentences/s | vs raw ideal | padding share |",
        "|---|---|---|---|",
        f"| raw ONNX Runtime, sorted ideal batches of {MAX_BATCH} | "
        f"{m['raw_sentences_per_s']:.1f} | 100% | {results['ideal_padding_ratio']:.1%} |",
        f"| batchserve, raw text, length-bucketed padding | {m['bucketed_sentences_per_s']:.1f} "
        f"| {results['bucketed_vs_raw']:.0%} | {m['padding_ratio']:.1%} |",
        f"| batchserve, ids padded to {MAX_LENGTH} (padding-blind) | "
        f"{m['blind_sentences_per_s']:.1f} | "
        f"{m['blind_sentences_per_s'] / m['raw_sentences_per_s']:.0%} | (client-side) |",
        "",
        f"Bucketed vs padding-blind: {results['bucketed_vs_blind']:.2f}x.",
        "",
        f"## Concurrency 1 at {MAX_LENGTH} tokens",
        "",
        f"{results['c1_requests']} requests of each kind, interleaved one by one; medians.",
        "",
        "| kind | p50 ms | over raw batch-1 |",
        "|---|---|---|",
        f"| raw ONNX Runtime, batch 1, in-process | {one['raw_batch1_ms']:.2f} | |",
        f"| floor: HTTP + one thread hand-off each way, constant answer (baselines/floor.py) | "
        f"{one['floor_p50_ms']:.2f} | +{one['floor_minus_raw_ms']:.2f} ms |",
        f"| batchserve, token ids in (JSON) | {one['ids_p50_ms']:.2f} | "
        f"+{one['ids_minus_raw_ms']:.2f} ms |",
        f"| batchserve, token ids in and embedding out as binary tensors | "
        f"{one['binary_p50_ms']:.2f} | +{one['binary_minus_raw_ms']:.2f} ms |",
        f"| batchserve, text in (tokenizing included) | {one['text_p50_ms']:.2f} | "
        f"+{one['text_minus_raw_ms']:.2f} ms |",
        "",
    ]
    (out / "TEXT.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument(
        "--c1-requests", type=int, default=200, help="requests of each kind at concurrency 1"
    )
    parser.add_argument(
        "--max-padding-ratio", type=float, help="instead of the shipped config's ceiling"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    args = parser.parse_args()
    if not (MODEL_DIR / "1" / "model.onnx").exists():
        raise SystemExit("the text model is not built: run `make text-model` first")
    results = run(
        args.rounds, args.seconds, args.concurrency, args.sentences, args.max_padding_ratio,
        args.c1_requests,
    )  # fmt: skip
    write_report(results, args.out)
    print((args.out / "TEXT.md").read_text())


if __name__ == "__main__":
    main()
