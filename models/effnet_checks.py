"""The checks models/build_effnet.py makes before it writes anything: the fp32 graph
against PyTorch, every test photo's top-5 (the cat and the coffee as expected), int8 against
fp32 on the photos and their flips and corner crops with the speed of both, and the graphs'
signatures as the server expects them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from effnet_data import CLASSES, CROP, EXPECTED, OPSET, TEST_IMAGES, corner_crops, load, preprocess
from PIL import Image

#: fp32 ONNX vs PyTorch on the test photos.
MAX_ABS_DIFF = 1e-4
BENCH_BATCH = 8
BENCH_SECONDS = 1.5  # per graph and round, two rounds


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(graph: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return np.asarray(graph.run(["logits"], {"input": batch})[0])


def check_fp32(graph: ort.InferenceSession, test: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """fp32 ONNX vs PyTorch: the test photos in one batch, and the first alone."""
    batched = run(graph, test)
    alone = run(graph, test[:1])
    diff = float(np.abs(batched - reference).max())
    diff_alone = float(np.abs(alone - reference[:1]).max())
    print(
        f"fp32 ONNX vs PyTorch: max abs diff {diff:.2e} (batch of {len(test)}), "
        f"{diff_alone:.2e} (batch of 1); logits within [{reference.min():.1f}, "
        f"{reference.max():.1f}]"
    )
    if max(diff, diff_alone) > MAX_ABS_DIFF:
        raise SystemExit(f"fp32 ONNX disagrees with PyTorch: {max(diff, diff_alone):.2e}")
    return batched


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    """The five likeliest classes and their softmax probabilities."""
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    return [(int(i), float(probs[i])) for i in np.argsort(-logits)[:5]]


def check_classes(what: str, logits: np.ndarray, labels: Sequence[str]) -> None:
    """Every test photo's top-5; the cat and coffee photos must be classed as EXPECTED."""
    print(f"{what} top-5:")
    failed = []
    for (name, _), row in zip(TEST_IMAGES, logits, strict=True):
        best = top5(row)
        print(f"  {name}: " + "; ".join(f"{i} {labels[i]} {p:.3f}" for i, p in best))
        if name in EXPECTED and best[0][0] not in EXPECTED[name]:
            failed.append(f"{name}: top-1 {best[0][0]} {labels[best[0][0]]!r}")
    if failed:
        raise SystemExit(f"{what}: wrong class ({'; '.join(failed)}); top-5 above")


def compare_int8(fp32: ort.InferenceSession, int8: ort.InferenceSession, test: np.ndarray) -> None:
    """Top-1 agreement with fp32 on the test photos, and on their flips and corner crops
    (evaluation only, never calibration); the speed ratio at batch BENCH_BATCH."""
    fp32_logits, int8_logits = run(fp32, test), run(int8, test)
    same = int((fp32_logits.argmax(1) == int8_logits.argmax(1)).sum())
    views = np.stack(
        [
            preprocess(view)
            for _, path in TEST_IMAGES
            for image in [load(path)]
            for view in (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), *corner_crops(image))
        ]
    )
    views_same = int((run(fp32, views).argmax(1) == run(int8, views).argmax(1)).sum())
    print(
        f"int8 vs fp32: top-1 agreement {same}/{len(test)} test photos, {views_same}/"
        f"{len(views)} of their flips and corner crops; max abs logit diff "
        f"{np.abs(int8_logits - fp32_logits).max():.2f}"
    )
    batch = np.ascontiguousarray(np.resize(test, (BENCH_BATCH, *test.shape[1:])))
    best = {"fp32": float("inf"), "int8": float("inf")}
    for _ in range(2):  # interleaved rounds, the best of each graph
        for what, graph in (("fp32", fp32), ("int8", int8)):
            best[what] = min(best[what], time_per_batch(graph, batch))
    print(
        f"batch {BENCH_BATCH}: fp32 {best['fp32'] * 1e3:.1f} ms, int8 {best['int8'] * 1e3:.1f} "
        f"ms per batch (best of 2 x {BENCH_SECONDS} s, 2 threads): int8 "
        f"{best['fp32'] / best['int8']:.2f}x fp32's speed"
    )


def time_per_batch(graph: ort.InferenceSession, batch: np.ndarray) -> float:
    run(graph, batch)  # warm-up
    runs, t = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t) < BENCH_SECONDS:
        run(graph, batch)
        runs += 1
    return elapsed / runs


def check_signature(path: Path) -> None:
    """Names, dtypes and shapes as the server will see them."""
    proto = onnx.load(str(path))
    got = [
        (
            v.name,
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in [*proto.graph.input, *proto.graph.output]
    ]
    float32 = onnx.TensorProto.FLOAT
    want = [("input", float32, ["batch", 3, CROP, CROP]), ("logits", float32, ["batch", CLASSES])]
    opset = {o.domain: o.version for o in proto.opset_import}.get("", 0)
    assert got == want and opset == OPSET, (path, got, opset)
