"""What tuning at load measures a model on: real inputs where the model directory has any.

In order: the `[warmup]` sample (the user's statement of what the model takes), else the
directory's `sample_request.json` (a v2 request: raw text goes through the model's
`[tokenizer]`, encoded images through its `[image]` step), else nothing, and the profile
falls back to synthetic inputs. Speeds differ between synthetic and real inputs, and so can
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
from app.repository.warmup import load_sample
from app.tensors import TensorSpec

SAMPLE_REQUEST = "sample_request.json"


@dataclass(frozen=True)
class TuningInputs:
    """Where the inputs come from (None: synthetic) and how to read them for a graph."""

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


def tuning_inputs(
    config: ModelConfig, model_dir: Path, *, max_image_pixels: int = ImageTransform.max_pixels
) -> TuningInputs:
    if config.warmup is not None:
        file, label = model_dir / config.warmup.file, "the [warmup] sample"
    elif (model_dir / SAMPLE_REQUEST).is_file():
        file, label = model_dir / SAMPLE_REQUEST, SAMPLE_REQUEST
    else:
        file, label = None, "synthetic inputs"
    return TuningInputs(file, label, config, model_dir, max_image_pixels)


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
