"""models/effnet's data, for models/build_effnet.py and its checks: the input's shape and
preprocessing as the checkpoint was trained, the test and calibration photos (only images
bundled in installed wheels), the classes the checks expect, and the config.toml it ships."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

RESIZE = 256  # the short side, bicubic
CROP = 224  # the centre crop
CLASSES = 1000
OPSET = 17

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


def write_sample_request(model_dir: Path) -> None:
    """The cat photo as a JPEG a client would send (sample.jpg), and sample_request.json:
    that file base64-encoded in a v2 JSON request for the top 3 classes. The README's curl
    example sends it, and tuning at load measures the model on it."""
    jpeg = model_dir / "sample.jpg"
    load(SKIMAGE_DIR / "chelsea.png").save(jpeg, format="JPEG", quality=90)
    request = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "data": [base64.b64encode(jpeg.read_bytes()).decode("ascii")]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    }  # fmt: skip
    (model_dir / "sample_request.json").write_text(json.dumps(request) + "\n")
