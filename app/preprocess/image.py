"""Raw images in: a model may declare `[image]`, so clients send encoded JPEG or PNG files
as a BYTES input instead of the float tensor they would otherwise decode, resize and
normalise themselves.

Decoding runs in a thread pool of its own, never on the event loop: Pillow releases the GIL
while it decodes and resizes, so the threads really run in parallel. Each request's images
are decoded together and fail together: an image that cannot be decoded (not an image,
truncated, too many pixels) is a 400 for its request only; the model's batcher never sees it.
"""

from __future__ import annotations

import asyncio
import io
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidInputError, OverloadedError

#: The EXIF tag that says how the camera was held (1: as stored).
EXIF_ORIENTATION = 0x0112
#: Pillow's resampling filters by the names a config uses.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageTransform:
    """What an image goes through to become one sample of the model's input: the short
    side resized to `resize`, a centre crop of `crop` x `crop`, channels in `channels` order
    scaled to [0, 1] then normalised by `mean` and `std`, laid out as `layout`."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: str = "RGB"
    layout: str = "NCHW"
    #: Images with more pixels than this are refused before they are decoded.
    max_pixels: int = 40_000_000

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if self.layout == "NCHW":
            return (3, self.crop, self.crop)
        return (self.crop, self.crop, 3)

    def decode(self, data: bytes, index: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """One encoded image -> float32 sample (written into `out` where given, a
        sample_shape array); InvalidInputError saying what is wrong."""
        image = self.drafted(_open(data, index, self.max_pixels))
        try:
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # else it would only copy
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidInputError(_corrupt(index, exc)) from None
        return self.normalized(np.asarray(self.resized(rgb)), out)

    def drafted(self, image: Image.Image) -> Image.Image:
        """A JPEG at least twice the target size, set to decode at the smallest 1/2, 1/4 or
        1/8 scale still at least that size: the DCT does the first downscaling, far cheaper
        than decoding every pixel. Other images are left as they are."""
        width, height = image.size
        short = min(width, height)
        if image.format == "JPEG" and short >= 2 * self.resize:
            # Integer ceilings, so the short side asks for exactly `resize`.
            wanted = (-(-width * self.resize // short), -(-height * self.resize // short))
            image.draft("RGB", wanted)
        return image

    @cached_property
    def _scale_and_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Per model channel, 1 / (255 std) and mean / std in float32, so that x * scale -
        shift gives, to the bit, what scaling a float32 image to [0, 1] then normalising
        gives."""
        std = np.asarray(self.std, dtype=np.float32)
        return 1.0 / (255.0 * std), np.asarray(self.mean, dtype=np.float32) / std

    def normalized(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """8-bit RGB [h, w, 3] -> the float32 sample: each channel converted, scaled and
        shifted straight into its place in the layout, two passes over the output (a
        lookup table or a whole-image float copy then a transpose take several times
        longer)."""
        scale, shift = self._scale_and_shift
        sources = (2, 1, 0) if self.channels == "BGR" else (0, 1, 2)
        height, width = pixels.shape[:2]
        if out is None:
            shape = (3, height, width) if self.layout == "NCHW" else (height, width, 3)
            out = np.empty(shape, dtype=np.float32)
        for channel, source in enumerate(sources):
            plane = out[channel] if self.layout == "NCHW" else out[..., channel]
            np.multiply(pixels[..., source], scale[channel], out=plane)
            np.subtract(plane, shift[channel], out=plane)
        return out

    def resized(self, image: Image.Image) -> Image.Image:
        """The short side resized to `resize`, then the centre `crop` x `crop`. Only the
        cropped region is resampled (Pillow's `box`): the same pixels as resizing the whole
        image and cropping, for half the work on a typical photo."""
        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        x, y = width / size[0], height / size[1]  # output pixel -> source pixels
        box = (left * x, top * y, (left + self.crop) * x, (top + self.crop) * y)
        return image.resize((self.crop, self.crop), INTERPOLATIONS[self.interpolation], box=box)

    def decode_all(self, images: np.ndarray) -> np.ndarray:
        """A request's images [n] -> its input tensor [n, *sample_shape]."""
        files = images.reshape(-1).tolist()
        # Each image is normalised straight into its row: no copy to stack them.
        batch = np.empty((len(files), *self.sample_shape), dtype=np.float32)
        for index, data in enumerate(files):
            if isinstance(data, str):  # JSON carried it as text: not an encoded image
                raise InvalidInputError(
                    f"image {index}: got a text string, not image bytes; send the file's bytes "
                    "with the binary data extension (tritonclient does), or base64 in JSON "
                    'with the input\'s parameters.content_type = "base64"'
                )
            self.decode(bytes(data), index, out=batch[index])
        return batch


def _open(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """The image, opened (its header read) but not decoded: its size is checked first."""
    if not data:
        raise InvalidInputError(f"image {index}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"image {index}: not an image file Pillow can read ({len(data)} bytes starting "
            f"{data[:8]!r}); send an encoded JPEG, PNG, WebP, BMP, GIF or TIFF file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's message has the size
        raise InvalidInputError(
            _too_large(index, int(found.group(1)) if found else None, max_pixels)
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(_corrupt(index, exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInputError(_too_large(index, width * height, max_pixels, (width, height)))
    if width == 0 or height == 0:
        raise InvalidInputError(f"image {index}: has no pixels ({width} x {height})")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow decodes: grey, palette, alpha, CMYK, 16-bit, float."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Wide grey: scaled to 8 bits by its type's range (convert("L") would clip at 255).
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(wide.max()), 1.0)
        grey = np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))  # transparent: white
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":
        image.load()  # decode errors surface here, inside the caller's error handling
        return image  # convert("RGB") would copy it
    return image.convert("RGB")


def _corrupt(index: int, exc: BaseException) -> str:
    return f"image {index}: truncated or corrupt, it could not be decoded ({exc})"


def _too_large(
    index: int, pixels: int | None, limit: int, size: tuple[int, int] | None = None
) -> str:
    what = f"{pixels:,} pixels" if pixels is not None else "more pixels than allowed"
    if size is not None:
        what += f" ({size[0]} x {size[1]})"
    return (
        f"image {index}: {what}, over the limit of {limit:,} pixels (BATCHSERVE_MAX_IMAGE_PIXELS"
        "): a file this size would take gigabytes to decode; resize it before sending"
    )


#: What a client refused for a full decoding queue is told to wait before retrying.
RETRY_AFTER_S = 0.1


class ImageStage:
    """The image decoding of one model version: BYTES input `input` -> the model's float
    input `target`, in `threads` worker threads, at most `max_queue_size` images at once."""

    def __init__(
        self,
        input_name: str,
        target: str,
        transform: ImageTransform,
        *,
        threads: int,
        max_queue_size: int,
    ) -> None:
        self.input = input_name
        self.target = target
        self.transform = transform
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-decode")
        self._max_images = max_queue_size
        self._images = 0
        self._running: set[asyncio.Future[np.ndarray]] = set()

    async def decode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The request's model input, decoded off the event loop."""
        count = int(images.size)
        if self._images + count > self._max_images:
            raise OverloadedError(
                f"image decoding queue is full ({self._images} images waiting, limit "
                f"{self._max_images}); retry later",
                retry_after_s=RETRY_AFTER_S,
            )
        self._images += count
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._pool, self.transform.decode_all, images)
        self._running.add(running)
        try:
            tensor = await asyncio.shield(running)  # a cancelled caller leaves the thread be
        finally:
            self._images -= count
            self._running.discard(running)
        return {self.target: tensor}

    async def close(self) -> None:
        """Let the images being decoded finish (their requests go on to the model), then
        stop the threads."""
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True)
