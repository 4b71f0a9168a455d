"""Text embeddings under a realistic length mix: variable-length batching against its limits.

`make bench-text` (after `make text-model`) measures, in one run and interleaved in rounds so
drift on a shared machine hits all alike:
- raw ONNX Runtime on the same sentences pre-sorted by length into ideal batches (no HTTP,
  the least padding possible): the ceiling;
- batchserve serving raw text with length-bucketed padding (the shipped minilm config);
- the same server with padding-blind requests (token ids padded to the model's 128), the
  batching users get when lengths are ignored;
- concurrency 1 at 128 tokens against raw batch-1 at 128 tokens (the latency batching adds).
Results go to load_tests/report/TEXT.md and text.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from load_tests.loadgen import LoadGenerator, PreparedRequest, Result, client_session
from load_tests.server_process import ServerProcess

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


def raw_latency_ms(sess: ort.InferenceSession, row: dict[str, np.ndarray], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        sess.run(["sentence_embedding"], row)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def text_request(text: str) -> PreparedRequest:
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
        "outputs": [{"name": "sentence_embedding"}],
    }
    return PreparedRequest(json.dumps(body).encode(), JSON_HEADERS, 1, False)


def ids_request(row: dict[str, np.ndarray]) -> PreparedRequest:
    inputs = [
        {"name": name, "shape": list(array.shape), "datatype": "INT64",
         "data": array.ravel().tolist()}
        for name, array in row.items()
    ]  # fmt: skip
    body = {"inputs": inputs, "outputs": [{"name": "sentence_embedding"}]}
    return PreparedRequest(json.dumps(body).encode(), JSON_HEADERS, 1, False)


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


def run(
    rounds: int, seconds: float, concurrency: int, count: int, ratio: float | None
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
        "padding_ratio", "raw_batch1_ms", "c1_text_p50_ms", "c1_ids_p50_ms",
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
            figures["raw_batch1_ms"].append(raw_latency_ms(sess, long_row, 30))
            one = asyncio.run(closed(server.url, [text_request(long_text)], 1, seconds / 2))
            figures["c1_text_p50_ms"].append(one.percentile(50) * 1000)
            one = asyncio.run(closed(server.url, [ids_request(long_row)], 1, seconds / 2))
            figures["c1_ids_p50_ms"].append(one.percentile(50) * 1000)
            for name, values in figures.items():
                print(f"  {name:26} {values[-1]:10.2f}", flush=True)
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
        "c1_text_minus_raw_ms": median["c1_text_p50_ms"] - median["raw_batch1_ms"],
        "c1_ids_minus_raw_ms": median["c1_ids_p50_ms"] - median["raw_batch1_ms"],
    }


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.json").write_text(json.dumps(results, indent=2))
    m = results["median"]
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
        f"Concurrency 1 at {MAX_LENGTH} tokens: raw batch-1 {m['raw_batch1_ms']:.2f} ms; "
        f"batchserve p50 {m['c1_text_p50_ms']:.2f} ms from text "
        f"(+{results['c1_text_minus_raw_ms']:.2f} ms, tokenizing included), "
        f"{m['c1_ids_p50_ms']:.2f} ms from ids (+{results['c1_ids_minus_raw_ms']:.2f} ms).",
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
        "--max-padding-ratio", type=float, help="instead of the shipped config's ceiling"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    args = parser.parse_args()
    if not (MODEL_DIR / "1" / "model.onnx").exists():
        raise SystemExit("the text model is not built: run `make text-model` first")
    results = run(
        args.rounds, args.seconds, args.concurrency, args.sentences, args.max_padding_ratio
    )
    write_report(results, args.out)
    print((args.out / "TEXT.md").read_text())


if __name__ == "__main__":
    main()
