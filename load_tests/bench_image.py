"""Real-time image recognition end to end on models/effnet (EfficientNet-Lite0, `make
image-model`): `make bench-image` writes load_tests/report/IMAGE.md and image.json.

1. Top-5 of each test photo (scikit-image's and scikit-learn's bundled photos) from the fp32
   and the int8 version, sent raw as JPEG and as PNG through tritonclient, read with the
   classification extension (class_count=5).
2. int8 against fp32 on crops and flips of those photos (random crops of 40-100% of the
   short side, half of them mirrored), raw ONNX Runtime: top-1 agreement where fp32 is
   confident (top-1 probability >= 0.3) and over all, and whether fp32's top-1 is in int8's
   top-5.
3. Speed of the versions at batch 8, raw ONNX Runtime, interleaved rounds; file sizes.
4. Served images/s, one run, alternating rounds at the same concurrency: raw JPEG files
   (the server decodes them) against pre-decoded float tensors, beside raw ONNX Runtime at
   the best batch size of step 3, measured in the same rotation; and the same with decoding
   on a core of its own.

    python -m load_tests.bench_image --out load_tests/report
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import shutil
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from app.cores import available_cores
from app.cpuinfo import cpu_identity
from app.optimize.int8_cpu import int8_saturation
from app.preprocess.image import ImageTransform
from app.repository.config import ModelConfig
from load_tests.bench_zero_config import paired_ratio
from load_tests.loadgen import BINARY_HEADER, LoadGenerator, PreparedRequest, client_session
from testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "effnet"
TRANSFORM = ImageTransform(
    resize=256, crop=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)
CONFIDENT = 0.3


def photos() -> dict[str, Image.Image]:
    import skimage
    from sklearn.datasets import load_sample_images

    data = Path(skimage.__file__).parent / "data"
    files = [data / n for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]
    files += [Path(f) for f in load_sample_images().filenames]
    return {f.name: Image.open(f).convert("RGB") for f in files}


def encode(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return out.getvalue()


def session(version: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    path = str(MODEL_DIR / version / "model.onnx")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def served_top5(server: ServerProcess, images: dict[str, Image.Image]) -> list[dict[str, Any]]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    rows = []
    for name, image in images.items():
        row: dict[str, Any] = {"photo": name}
        for kind in ("JPEG", "PNG"):
            for version in ("1", "2"):
                data = httpclient.InferInput("image", [1], "BYTES")
                data.set_data_from_numpy(np.array([encode(image, kind)], dtype=object))
                result = client.infer(
                    "effnet", [data], model_version=version,
                    outputs=[httpclient.InferRequestedOutput("logits", class_count=5)],
                )  # fmt: skip
                entries = [
                    e.decode() if isinstance(e, bytes) else e for e in result.as_numpy("logits")[0]
                ]
                row[f"{kind} v{version}"] = [e.split(":", 2)[2].split(",")[0] for e in entries]
        rows.append(row)
    return rows


def crops(images: dict[str, Image.Image], per_photo: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    samples = []
    for image in images.values():
        for index in range(per_photo):
            side = int(min(image.size) * rng.uniform(0.4, 1.0))
            left = int(rng.integers(0, image.width - side + 1))
            top = int(rng.integers(0, image.height - side + 1))
            crop = image.crop((left, top, left + side, top + side))
            if index % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            samples.append(TRANSFORM.decode(encode(crop, "PNG")))
    return np.stack(samples)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def agreement(tensors: np.ndarray, threads: int) -> dict[str, Any]:
    outputs = {}
    for version in ("1", "2"):
        graph = session(version, threads)
        outputs[version] = np.concatenate(
            [graph.run(None, {"input": tensors[i : i + 32]})[0] for i in range(0, len(tensors), 32)]
        )
    fp32, int8 = softmax(outputs["1"]), outputs["2"]
    top1, confident = fp32.argmax(axis=1), fp32.max(axis=1) >= CONFIDENT
    same = int8.argmax(axis=1) == top1
    in_top5 = (np.argsort(-int8, axis=1)[:, :5] == top1[:, None]).any(axis=1)
    return {
        "samples": len(tensors),
        "confident": int(confident.sum()),
        "agreement_confident": float(same[confident].mean()),
        "agreement_all": float(same.mean()),
        "fp32_top1_in_int8_top5_confident": float(in_top5[confident].mean()),
        "fp32_top1_in_int8_top5_all": float(in_top5.mean()),
    }


def throughput(graph: ort.InferenceSession, batch: np.ndarray, seconds: float) -> float:
    graph.run(None, {"input": batch})
    runs, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        graph.run(None, {"input": batch})
        runs += 1
    return runs * len(batch) / (time.perf_counter() - began)


def raw_speed(tensors: np.ndarray, threads: int, rounds: int) -> dict[str, Any]:
    graphs = {v: session(v, threads) for v in ("1", "2")}
    batch8 = tensors[:8]
    per_round: dict[str, list[float]] = {"1": [], "2": []}
    for index in range(rounds):
        for version in ("1", "2") if index % 2 == 0 else ("2", "1"):
            per_round[version].append(throughput(graphs[version], batch8, 1.0))
    best = {b: throughput(graphs["1"], np.ascontiguousarray(tensors[:b]), 2.0) for b in (1, 8, 32)}
    return {
        "batch8_fp32": statistics.median(per_round["1"]),
        "batch8_int8": statistics.median(per_round["2"]),
        "fp32_by_batch": best,
        "sizes_mb": {v: (MODEL_DIR / v / "model.onnx").stat().st_size / 1e6 for v in ("1", "2")},
    }


def image_request(data: bytes) -> PreparedRequest:
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data) + 4}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }).encode()  # fmt: skip
    body = header + len(data).to_bytes(4, "little") + data
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    return PreparedRequest(body, headers, 1, True)


def tensor_request(tensor: np.ndarray) -> PreparedRequest:
    raw = np.ascontiguousarray(tensor[None], dtype=np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }).encode()  # fmt: skip
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    return PreparedRequest(header + raw, headers, 1, True)


def served_tuning(url: str) -> str:
    """What tuning at load chose for effnet v1, from its metadata: `1x2, batches of 4 (on
    sample_request.json)`; the ratios of the served table depend on it."""
    import httpx

    tuning = httpx.get(f"{url}/v2/models/effnet/versions/1").json()["parameters"]["tuning"]
    if not tuning.get("layout"):
        return f"{tuning['source']} ({tuning.get('reason', '')})"
    spinning = ", spinning" if tuning.get("spinning") else ""
    return (
        f"{tuning['layout']}{spinning}, batches of {tuning['batch_size']} (on {tuning['inputs']})"
    )


def own_core_copy(repository: Path) -> None:
    """effnet v1 with decoding on a core of its own: one 1-thread instance and one decoding
    thread, so the two never compete for a core."""
    config = (MODEL_DIR / "config.toml").read_text(encoding="utf-8")
    config = re.sub(r"\[version_policy\][^\[]*", "", config)  # v1 only
    assert "[image]\n" in config
    config = config.replace("[image]\n", "[image]\nthreads = 1\n", 1)
    config += "\n[[instances]]\ncount = 1\nthreads = 1\n"
    ModelConfig.model_validate(tomllib.loads(config))
    target = repository / "effnet_own_core"
    # Copied: the server refuses files linked from outside the model directory.
    shutil.copytree(MODEL_DIR, target, ignore=shutil.ignore_patterns("2", "config.toml"))
    (target / "config.toml").write_text(config, encoding="utf-8")


async def served(
    server: ServerProcess,
    images: dict[str, Image.Image],
    *,
    concurrency: int,
    rounds: int,
    raw: tuple[ort.InferenceSession, np.ndarray],
) -> dict[str, list[float]]:
    """Images/s of each load, and of raw ONNX Runtime (`raw`: the session and its best
    batch) in the same rotation: the machine's speed drifts between minutes, so a raw
    figure from another phase of the run does not compare."""
    jpegs = [image_request(encode(image, "JPEG")) for image in images.values()]
    tensors = [tensor_request(TRANSFORM.decode(encode(image, "PNG"))) for image in images.values()]
    loads = {}
    for suffix, model in (("", "effnet"), ("_own_core", "effnet_own_core")):
        loads[f"jpeg{suffix}"] = LoadGenerator(server.url, f"{model}/versions/1", jpegs)
        loads[f"tensor{suffix}"] = LoadGenerator(server.url, f"{model}/versions/1", tensors)
    results: dict[str, list[float]] = {name: [] for name in (*loads, "raw")}
    async with client_session(concurrency) as http:
        for load in loads.values():  # warm-up
            await load.closed_loop(http, concurrency, 2.0)
        for index in range(rounds):
            order = [*loads, "raw"] if index % 2 == 0 else ["raw", *reversed(loads)]
            for name in order:
                if name == "raw":
                    results[name].append(await asyncio.to_thread(throughput, *raw, 8.0))
                    continue
                result = await loads[name].closed_loop(http, concurrency, 8.0)
                assert set(result.statuses) == {200}, result.statuses
                results[name].append(result.statuses[200] / result.seconds)
    return results


def report(data: dict[str, Any]) -> str:
    lines = ["# Images end to end: EfficientNet-Lite0 (load_tests/bench_image.py)", ""]
    cpu = data.get("cpu")
    if cpu is None:
        lines += ["CPU: not recorded (runs before bench_image recorded it). Its int8 speed-up "
                  "and agreement are those of a CPU with VNNI, whose int8 kernels do not "
                  "saturate.", ""]  # fmt: skip
    else:
        lines += [f"CPU: {cpu['identity']}, {cpu['cores']} cores; int8 kernels: {cpu['int8']}.",
                  ""]  # fmt: skip
    lines += ["## Top-5 of the test photos, served raw (class_count=5)", "",
              "| photo | JPEG fp32 | JPEG int8 | PNG fp32 = JPEG fp32 | PNG int8 top-1 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for row in data["top5"]:
        lines.append(
            f"| {row['photo']} | {', '.join(row['JPEG v1'])} | {', '.join(row['JPEG v2'])} | "
            f"{'yes' if row['PNG v1'] == row['JPEG v1'] else ', '.join(row['PNG v1'])} | "
            f"{row['PNG v2'][0]} |"
        )
    a = data["agreement"]
    lines += ["", "## int8 against fp32 on crops and flips (raw ONNX Runtime)", "",
              f"{a['samples']} crops and flips; fp32 confident (top-1 >= {CONFIDENT}) on "
              f"{a['confident']}: int8 top-1 agrees on {a['agreement_confident']:.1%} of those "
              f"({a['agreement_all']:.1%} of all); fp32's top-1 is in int8's top-5 on "
              f"{a['fp32_top1_in_int8_top5_confident']:.1%} of the confident ones "
              f"({a['fp32_top1_in_int8_top5_all']:.1%} of all)."]  # fmt: skip
    s = data["speed"]
    by_batch = ", ".join(f"{b}: {v:.1f}" for b, v in s["fp32_by_batch"].items())
    lines += ["", "## Speed (raw ONNX Runtime, all cores, interleaved)", "",
              f"batch 8: fp32 {s['batch8_fp32']:.1f} images/s, int8 {s['batch8_int8']:.1f} "
              f"(x{s['batch8_int8'] / s['batch8_fp32']:.2f}); files {s['sizes_mb']['1']:.1f} MB "
              f"and {s['sizes_mb']['2']:.1f} MB ({s['sizes_mb']['1'] / s['sizes_mb']['2']:.1f}x "
              f"smaller). fp32 by batch: {by_batch} images/s."]  # fmt: skip
    v = data["served"]
    best = statistics.median(v["raw"])
    jpeg, tensor = statistics.median(v["jpeg"]), statistics.median(v["tensor"])
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(v["jpeg"], v["tensor"], strict=True))
    lines += ["", f"## Served images/s, fp32, C={data['concurrency']}, one image a request", "",
              f"effnet v1 as tuned at load: {data['tuning']}. Ratios are the median of each "
              f"round's own ratio (JPEG / tensors by round: {per_round}).", "",
              "| input | images/s (median of rounds) | x tensors | x raw ORT best |",
              "|---|---:|---:|---:|",
              f"| raw JPEG (decoded by the server) | {jpeg:.1f} | "
              f"x{paired_ratio(v, 'jpeg', 'tensor'):.2f} | x{paired_ratio(v, 'jpeg', 'raw'):.2f} |",
              f"| pre-decoded FP32 tensor | {tensor:.1f} | x1.00 | "
              f"x{paired_ratio(v, 'tensor', 'raw'):.2f} |",
              f"| raw ONNX Runtime, batch {data['served_raw_batch']} (its best above), "
              f"in the same rotation | {best:.1f} | | x1.00 |"]  # fmt: skip
    own_jpeg, own_tensor = (
        statistics.median(v["jpeg_own_core"]),
        statistics.median(v["tensor_own_core"]),
    )
    own_ratio = paired_ratio(v, "jpeg_own_core", "tensor_own_core")
    lines += ["", "Decoding on a core of its own (one 1-thread instance, one decoding thread; "
              "above, decoding and the model share every core):", "",
              "| input | images/s | x tensors |", "|---|---:|---:|",
              f"| raw JPEG | {own_jpeg:.1f} | x{own_ratio:.2f} |",
              f"| pre-decoded FP32 tensor | {own_tensor:.1f} | x1.00 |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    parser.add_argument("--crops-per-photo", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite IMAGE.md from the image.json in --out, measuring nothing",
    )
    args = parser.parse_args()
    if args.report_only:
        data = json.loads((args.out / "image.json").read_text(encoding="utf-8"))
        (args.out / "IMAGE.md").write_text(report(data), encoding="utf-8")
        return
    if not (MODEL_DIR / "2" / "model.onnx").exists():
        raise SystemExit("models/effnet is not built: make image-model")
    threads = available_cores()
    images = photos()
    tensors = crops(images, args.crops_per_photo)
    data: dict[str, Any] = {"concurrency": args.concurrency}
    data["cpu"] = {"identity": cpu_identity(), "cores": threads, "int8": int8_saturation().why}
    data["agreement"] = agreement(tensors, threads)
    data["speed"] = raw_speed(tensors, threads, rounds=5)
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work)
        (repository / "effnet").symlink_to(MODEL_DIR.resolve(), target_is_directory=True)
        own_core_copy(repository)
        server = ServerProcess(repository, env={"BATCHSERVE_CACHE_DIR": str(repository / ".cache")})
        try:
            data["top5"] = served_top5(server, images)
            data["tuning"] = served_tuning(server.url)
            by_batch = data["speed"]["fp32_by_batch"]
            best = max(by_batch, key=by_batch.get)
            raw = (session("1", threads), np.ascontiguousarray(tensors[:best]))
            data["served"] = asyncio.run(
                served(server, images, concurrency=args.concurrency, rounds=args.rounds, raw=raw)
            )
            data["served_raw_batch"] = best
        finally:
            server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image.json").write_text(json.dumps(data, indent=2) + "\n")
    text = report(data)
    (args.out / "IMAGE.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
