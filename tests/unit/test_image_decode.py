"""The `[image]` transform on images made here: EXIF orientation applied, the short side
resized and centre-cropped, channels ordered, normalised and laid out as configured, and
the config checked against the graph."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.cores import available_cores
from app.errors import InvalidInputError, ModelLoadError
from app.preprocess.image import ImageTransform
from app.repository.image import build_image_stage, default_decode_threads
from app.repository.sections import ImageConfig
from app.tensors import TensorSpec
from tests.image_models import encoded


def halves(size: tuple[int, int] = (80, 40)) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def test_exif_orientation_is_applied_before_resizing() -> None:
    """Orientation 6 (rotate 90 clockwise to view): the red left half ends up on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(halves(), "JPEG", exif=exif.tobytes(), quality=95)
    sample = ImageTransform(resize=32, crop=32, layout="NHWC").decode(data)
    assert sample.shape == (32, 32, 3)
    top, bottom = sample[:8].mean(axis=(0, 1)), sample[-8:].mean(axis=(0, 1))
    assert top[0] > 0.8 and top[2] < 0.25 and bottom[2] > 0.8 and bottom[0] < 0.25


def test_short_side_resize_then_centre_crop_then_normalise() -> None:
    transform = ImageTransform(
        resize=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels="BGR"
    )
    sample = transform.decode(encoded(halves((160, 80))))
    assert sample.shape == (3, 32, 32) and sample.dtype == np.float32
    # BGR: channel 0 is blue. The 80x40 resize keeps both halves; the crop is centred.
    assert sample[0, :, :10].mean() == pytest.approx(-1.0, abs=0.02)  # red part: no blue
    assert sample[0, :, -10:].mean() == pytest.approx(1.0, abs=0.02)  # blue part
    assert sample[2, :, :10].mean() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("channels", ["RGB", "BGR"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_scale_and_shift_give_the_float_arithmetic_to_the_bit(channels: str, layout: str) -> None:
    """Every 8-bit value in every channel, scaled and shifted in place: exactly what
    normalising a float32 image gives, (x / 255 - mean) / std, reordered and laid out as
    configured."""
    transform = ImageTransform(
        resize=16, crop=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        channels=channels, layout=layout,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    values = np.stack([rng.permutation(256) for _ in range(3)], axis=-1)  # each channel: all
    pixels = values.reshape(16, 16, 3).astype(np.uint8)
    floats = (
        pixels.astype(np.float32)[..., ::-1] if channels == "BGR" else pixels.astype(np.float32)
    )
    std = np.asarray(transform.std, dtype=np.float32)
    wanted = floats * (1.0 / (255.0 * std)) - np.asarray(transform.mean, np.float32) / std
    if layout == "NCHW":
        wanted = wanted.transpose(2, 0, 1)
    got = transform.normalized(pixels)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, wanted)


def test_a_text_string_is_refused_with_how_to_send_images() -> None:
    with pytest.raises(InvalidInputError, match="base64"):
        ImageTransform(resize=8, crop=8).decode_all(np.array(["a path.jpg"], dtype=object))


@pytest.mark.parametrize(
    ("shape", "says"),
    [((-1, 3, 64, 64), "takes [-1, 3, 64, 64]"), ((-1, 32, 32, 3), "takes [-1, 32, 32, 3]")],
)
def test_a_config_that_does_not_fit_the_graph_is_refused(shape: tuple[int, ...], says: str) -> None:
    inputs = (TensorSpec("input", "FP32", shape),)
    with pytest.raises(ModelLoadError, match=says.replace("[", r"\[")):
        build_image_stage(
            ImageConfig(resize=40, crop=32), inputs, max_batch_size=8, max_queue_size=8,
            max_pixels=1000, devices=["cpu"],
        )  # fmt: skip


def test_the_image_input_must_not_clash_with_a_model_input() -> None:
    inputs = (TensorSpec("image", "FP32", (-1, 3, 32, 32)),)
    with pytest.raises(ModelLoadError, match="already a model input"):
        build_image_stage(
            ImageConfig(resize=40, crop=32), inputs, max_batch_size=8, max_queue_size=8,
            max_pixels=1000, devices=["cpu"],
        )  # fmt: skip


@pytest.mark.parametrize(
    ("size", "decoded"),
    [((512, 768), (256, 384)), ((511, 768), (511, 768)), ((1100, 2000), (275, 500))],
)
def test_jpegs_twice_the_target_or_more_decode_at_a_dct_scale(
    size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    """The smallest 1/2, 1/4, 1/8 scale whose short side is still at least `resize`:
    exactly twice the target is decoded at half, just under twice it in full."""
    transform = ImageTransform(resize=256, crop=224)
    data = encoded(halves(size), "JPEG")
    image = transform.drafted(Image.open(io.BytesIO(data)))
    assert image.size == decoded
    assert transform.decode(data).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("devices", "cores", "threads"),
    [
        (["cpu"], 16, 4),  # the model computes on the cores: decoding takes at most 4
        (["cpu", "cpu"], 2, 2),
        (["cuda:0"], 16, 15),  # the cores are free: all but the event loop's
        (["cuda:0", "cuda:1"], 16, 15),
        (["cpu", "cuda:0"], 16, 4),  # a CPU instance beside the GPU keeps its cores
        (["cuda:0"], 2, 2),  # never fewer than beside a CPU instance
        (["cuda:0"], 1, 1),
    ],
)
def test_decoding_threads_by_default_follow_where_the_model_computes(
    devices: list[str], cores: int, threads: int
) -> None:
    assert default_decode_threads(devices, cores) == threads


@pytest.mark.parametrize("devices", [["cpu"], ["cuda:0"]])
def test_the_configs_decoding_threads_win_over_the_default(devices: list[str]) -> None:
    inputs = (TensorSpec("input", "FP32", (-1, 3, 32, 32)),)
    built = {}
    for threads in (None, 3):
        stage = build_image_stage(
            ImageConfig(resize=40, crop=32, threads=threads), inputs, max_batch_size=8,
            max_queue_size=8, max_pixels=1000, devices=devices,
        )  # fmt: skip
        assert stage is not None
        built[threads] = stage.threads
    assert built == {None: default_decode_threads(devices, available_cores()), 3: 3}
