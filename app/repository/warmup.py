"""Warm-up before a version reports ready: on the config's sample, or on synthetic inputs.

A configured sample (`[warmup] file`) is the user's statement of what the model accepts, so
its failure fails the load. Synthetic inputs (zeros, strings "0") are only a guess at what
the graph accepts: a model whose graph refuses them (a lookup it indexes with the input, a
parser of its strings) still serves, so their failure is logged, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.errors import ModelLoadError
from app.repository.sections import WarmupConfig
from app.runtime import OnnxInstance
from app.tensors import TensorSpec, numpy_dtype

log = logging.getLogger(__name__)


def warm_up(
    instances: Sequence[OnnxInstance],
    *,
    label: str,
    sizes: Sequence[int],
    batches: bool,
    sample: dict[str, np.ndarray] | None,
) -> None:
    """Warm every instance at every size; see the module docstring for failures."""
    for instance in instances:
        try:
            instance.warm_up(sizes, batches=batches, sample=sample)
        except Exception as exc:
            if sample is not None:
                raise ModelLoadError(f"warm-up on the [warmup] sample failed: {exc}") from None
            log.warning(
                "%s: warm-up on synthetic inputs failed on %s (%s); it serves all the same, "
                "its first requests may be slower. Give it a [warmup] file of real inputs.",
                label, instance.label, exc,
            )  # fmt: skip
            return


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
