"""Build a model's image step from its `[image]` config, and its class labels from
`[labels]`, both checked against the graph."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from PIL import Image

from app.cores import available_cores
from app.errors import ModelLoadError
from app.preprocess.image import ImageStage, ImageTransform
from app.repository.sections import ImageConfig
from app.tensors import TensorSpec

#: Decoding threads by default beside a model computing on the CPU: one per core, at most
#: this many, so decoding does not take the cores the model's instances compute on.
MAX_DEFAULT_THREADS = 4


def default_decode_threads(devices: Collection[str], cores: int) -> int:
    """Decoding threads where the config sets none, for instances on `devices` and a
    process that may use `cores`. A model whose instances all compute on GPUs leaves the
    cores to decoding, which then bounds its images/s: every core but one, kept for the
    event loop. Beside CPU instances, the cores up to MAX_DEFAULT_THREADS."""
    beside_cpu = min(MAX_DEFAULT_THREADS, cores)
    if devices and all(device != "cpu" for device in devices):
        return max(beside_cpu, cores - 1)
    return beside_cpu


def build_image_stage(
    config: ImageConfig | None,
    inputs: tuple[TensorSpec, ...],
    *,
    max_batch_size: int,
    max_queue_size: int,
    max_pixels: int,
    devices: Collection[str],
) -> ImageStage | None:
    """The image stage `[image]` declares (None without one), decoding in the config's
    threads or `default_decode_threads` for the instances' `devices`."""
    if config is None:
        return None
    if max_batch_size <= 0:
        raise ModelLoadError("[image] needs batching: set max_batch_size above 0")
    transform, target = image_transform(config, inputs, max_pixels=max_pixels)
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own bomb check agrees with ours
    threads = config.threads or default_decode_threads(devices, available_cores())
    return ImageStage(
        config.input, target, transform, threads=threads, max_queue_size=max_queue_size
    )


def image_transform(
    config: ImageConfig, inputs: tuple[TensorSpec, ...], *, max_pixels: int
) -> tuple[ImageTransform, str]:
    """What `[image]` does to an encoded image, and the model input it fills, checked
    against the graph's inputs (ModelLoadError saying what does not fit)."""
    floats = [spec for spec in inputs if spec.datatype.startswith(("FP", "BF"))]
    names = [spec.name for spec in inputs]
    if config.tensor is not None:
        target = next((spec for spec in inputs if spec.name == config.tensor), None)
        if target is None:
            raise ModelLoadError(f"image.tensor '{config.tensor}' is not a model input {names}")
    elif len(floats) == 1:
        target = floats[0]
    else:
        raise ModelLoadError(
            f"[image] fills one float input, and the model has {len(floats)} among {names}; "
            "name it with image.tensor"
        )
    if len(inputs) != 1:
        raise ModelLoadError(
            f"[image] fills the model's only input, but it has inputs {names}: the others "
            "would have nothing to come from"
        )
    if config.input in names:
        raise ModelLoadError(f"image.input '{config.input}' is already a model input")
    transform = ImageTransform(
        resize=config.resize,
        crop=config.crop,
        interpolation=config.interpolation,
        mean=(config.mean[0], config.mean[1], config.mean[2]),
        std=(config.std[0], config.std[1], config.std[2]),
        channels=config.channels,
        layout=config.layout,
        max_pixels=max_pixels,
    )
    sample = target.shape[1:]
    want = transform.sample_shape
    if len(sample) != 3 or any(d >= 0 and d != w for d, w in zip(sample, want, strict=True)):
        raise ModelLoadError(
            f"[image] makes samples of shape {list(want)} ({config.layout}, crop "
            f"{config.crop}), but input '{target.name}' takes {list(target.shape)}"
        )
    return transform, target.name


def load_labels(
    labels: dict[str, str], model_dir: Path, outputs: tuple[TensorSpec, ...]
) -> dict[str, tuple[str, ...]]:
    """`[labels]`: output name -> its class names, one line of the file per class."""
    found: dict[str, tuple[str, ...]] = {}
    known = {spec.name: spec for spec in outputs}
    for output, file in labels.items():
        if output not in known:
            raise ModelLoadError(f"labels.{output}: not an output of the model {sorted(known)}")
        path = (model_dir / file).resolve()
        if model_dir.resolve() not in path.parents or not path.is_file():
            raise ModelLoadError(f"labels.{output} = '{file}' is not a file inside {model_dir}")
        names = tuple(path.read_text(encoding="utf-8").splitlines())
        classes = known[output].shape[-1] if known[output].shape else -1
        if classes >= 0 and len(names) != classes:
            raise ModelLoadError(
                f"labels.{output}: {file} has {len(names)} lines, the output {classes} classes"
            )
        found[output] = names
    return found
