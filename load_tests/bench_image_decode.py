"""Image decoding for the `[image]` stage: Pillow (with and without JPEG draft mode) against
OpenCV, decode + short side to 256 (bicubic) + 224 centre crop to uint8 RGB, on photos
shipped with scikit-image and scikit-learn, encoded as JPEG (quality 90) and PNG at their
size and at twice it. Interleaved rounds, one thread; the ratio is what to read. OpenCV's
INTER_CUBIC does not low-pass when it shrinks, so its pixels differ from Pillow's (and from
the torchvision preprocessing models are trained with); the last column says by how much.

    python -m load_tests.bench_image_decode      (needs opencv-python-headless, scikit-image)
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.preprocess.image import ImageTransform

TRANSFORM = ImageTransform(resize=256, crop=224, interpolation="bicubic")


def photos() -> list[tuple[str, Image.Image]]:
    import skimage
    from sklearn.datasets import load_sample_images

    data = Path(skimage.__file__).parent / "data"
    files = [data / n for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    files += [Path(f) for f in load_sample_images().filenames]
    return [(f.stem, Image.open(f).convert("RGB")) for f in files]


def encoded(kind: str, image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return out.getvalue()


def with_pillow_draft(data: bytes) -> np.ndarray:
    """What the stage does before its float math: draft-mode decode, RGB, resize, crop."""
    image = TRANSFORM.drafted(Image.open(io.BytesIO(data)))
    return np.asarray(TRANSFORM.resized(image.convert("RGB")))


def with_pillow_no_draft(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(TRANSFORM.resized(image))


def with_opencv(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    scale = 256 / min(width, height)
    size = (max(224, round(width * scale)), max(224, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    top, left = (size[1] - 224) // 2, (size[0] - 224) // 2
    return np.ascontiguousarray(image[top : top + 224, left : left + 224, ::-1])


DECODERS: dict[str, Callable[[bytes], object]] = {
    "pillow (draft)": with_pillow_draft,
    "pillow": with_pillow_no_draft,
    "opencv": with_opencv,
}


def main(rounds: int = 3, window_s: float = 0.2) -> None:
    cases = []
    for name, image in photos():
        for scale in (1, 2):
            big = image.resize((image.width * scale, image.height * scale)) if scale > 1 else image
            for kind in ("JPEG", "PNG"):
                cases.append((f"{name} {big.width}x{big.height} {kind}", encoded(kind, big)))
    names = " | ".join(f"{d} ms" for d in DECODERS)
    print(f"| image | {names} | opencv / pillow (draft) | opencv vs pillow, mean abs |")
    print("|---|" + "---:|" * (len(DECODERS) + 2))
    for label, data in cases:
        times: dict[str, list[float]] = {d: [] for d in DECODERS}
        for _ in range(rounds):
            for decoder_name, decode in DECODERS.items():
                count, began = 0, time.perf_counter()
                while time.perf_counter() - began < window_s:
                    decode(data)
                    count += 1
                times[decoder_name].append((time.perf_counter() - began) / count * 1000)
        medians = {d: statistics.median(t) for d, t in times.items()}
        cells = " | ".join(f"{medians[d]:.2f}" for d in DECODERS)
        ratio = medians["opencv"] / medians["pillow (draft)"]
        differ = np.abs(
            with_opencv(data).astype(np.int16) - with_pillow_no_draft(data).astype(np.int16)
        )
        print(f"| {label} | {cells} | {ratio:.2f} | {differ.mean():.1f} |", flush=True)


if __name__ == "__main__":
    main()
