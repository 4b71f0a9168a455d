"""A model directory's sample inputs: the `[warmup]` sample that warm-up runs, and what tuning
at load measures the model on, real inputs where the directory has any.

For tuning, in order: the `[warmup]` sample (the user's statement of what the model
takes), else the directory's `sample_request.json` (a v2 request: raw text goes through the
model's `[tokenizer]`, encoded images through its `[image]` step), else nothing, and the
profile falls back to synthetic inputs. Speeds differ between synthetic and real inputs, and so can
the ranking of layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from app.errors import ModelLoadError, ServingError
from app.preprocess import TextTokenizer
from app.preprocess.image import ImageTransform
from app.protocol.codec import decode_infer_request
from app.repository.config import ModelConfig
from app.repository.image import image_transform
from app.repository.sections import WarmupConfig
from app.tensors import TensorSpec, numpy_dtype

SAMPLE_REQUEST = "sample_request.json"


def load_sample(
    config: WarmupConfig | None, model_dir: Path, inputs: Sequence[TensorSpec]
) -> dict[str, np.ndarray] | None:
    """The `[warmup]` sample as model inputs (checked against their specs), or None."""
    if config is None:
        return None
    path = (model_dir / config.file).resolve()
    if model_dir.resolve() not in path.parents or not path.is_file():
        raise ModelLoadError(
            f"warmup.file '{config.file}' is not a file inside {model_dir}; put the .npz "
            "next to config.toml"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # not an .npz, or object arrays (which would need pickle)
        raise ModelLoadError(f"warmup.file {path} is not a NumPy .npz of arrays: {exc}") from None
    names = [spec.name for spec in inputs]
    if sorted(arrays) != sorted(names):
        raise ModelLoadError(
            f"warmup.file {path} holds arrays {sorted(arrays)}; the model's inputs are {names}"
        )
    sample = {}
    for spec in inputs:
        array = arrays[spec.name]
        if spec.datatype == "BYTES":
            sample[spec.name] = array.astype(str).astype(object)
            continue
        try:
            sample[spec.name] = array.astype(numpy_dtype(spec.datatype), casting="same_kind")
        except TypeError:
            raise ModelLoadError(
                f"warmup.file {path}: '{spec.name}' is {array.dtype}, the model takes "
                f"{spec.datatype}"
            ) from None
    return sample


@dataclass(frozen=True)
class TuningSamples:
    """Where the inputs come from (None: synthetic) and how to read them for a graph
    (app.tuning.at_load.Samples)."""

    file: Path | None
    label: str
    config: ModelConfig
    model_dir: Path
    #: The server's BATCHSERVE_MAX_IMAGE_PIXELS: a sample image is refused as a request's is.
    max_image_pixels: int = ImageTransform.max_pixels

    def read(
        self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> dict[str, np.ndarray] | None:
        """The model's inputs from the file, checked against the graph; None if there is
        no file. ModelLoadError when it does not fit the model (the profile then fails and
        says so)."""
        if self.file is None:
            return None
        if self.config.warmup is not None:
            return load_sample(self.config.warmup, self.model_dir, inputs)
        return self._from_request(self.file, inputs, outputs)

    def _from_request(
        self, path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> dict[str, np.ndarray]:
        body = path.read_bytes()
        config, model_dir = self.config, self.model_dir
        tokenizer = config.tokenizer
        try:
            document = orjson.loads(body)
            if config.image is not None and _sends(document, config.image.input):
                transform, target = image_transform(
                    config.image, tuple(inputs), max_pixels=self.max_image_pixels
                )
                files = TensorSpec(config.image.input, "BYTES", (-1,), opaque=True)
                request = decode_infer_request(body, (files,), outputs)
                return {target: transform.decode_all(request.inputs[config.image.input])}
            if tokenizer is not None:
                texts = _texts(document, tokenizer.input)
                if texts is not None:
                    names = tuple(spec.name for spec in inputs)
                    run = TextTokenizer(model_dir / tokenizer.file, tokenizer.max_length, names).run
                    return run({tokenizer.input: np.array(texts, dtype=object)})
            return decode_infer_request(body, inputs, outputs).inputs
        except (ServingError, orjson.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path} does not fit the model: {exc}") from None


def tuning_samples(
    config: ModelConfig, model_dir: Path, *, max_image_pixels: int = ImageTransform.max_pixels
) -> TuningSamples:
    if config.warmup is not None:
        file, label = model_dir / config.warmup.file, "the [warmup] sample"
    elif (model_dir / SAMPLE_REQUEST).is_file():
        file, label = model_dir / SAMPLE_REQUEST, SAMPLE_REQUEST
    else:
        file, label = None, "synthetic inputs"
    return TuningSamples(file, label, config, model_dir, max_image_pixels)


def _sends(document: object, name: str) -> bool:
    """Whether the request document has an input named `name`."""
    entries = document.get("inputs") if isinstance(document, dict) else None
    return any(isinstance(e, dict) and e.get("name") == name for e in entries or [])


def _texts(document: object, name: str) -> list[str] | None:
    """The raw texts of the request's input `name`, if it sends that input."""
    if not isinstance(document, dict):
        return None
    for entry in document.get("inputs") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            data = entry.get("data")
            if isinstance(data, list) and data and all(isinstance(t, str) for t in data):
                return data
    return None
