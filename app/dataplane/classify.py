"""Triton's classification extension: an output asked for with `parameters.classification
= K` answers, per sample, its K highest classes as BYTES "score:index:label" strings (no
label part when the model's config names no labels for that output), highest first."""

from __future__ import annotations

import numpy as np

from app.errors import InvalidInputError
from app.tensors import TensorSpec


def top_classes(
    name: str, scores: np.ndarray, count: int, labels: tuple[str, ...] | None
) -> np.ndarray:
    """[batch, ..., classes] -> [batch, ..., min(count, classes)] of strings."""
    if scores.ndim < 2 or not np.issubdtype(scores.dtype, np.number):
        raise InvalidInputError(
            f"output '{name}' has shape {list(scores.shape)} of {scores.dtype}: classification "
            "needs per-sample class scores [batch, classes]"
        )
    k = min(count, scores.shape[-1])
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    values = np.take_along_axis(scores, order, axis=-1)
    result = np.empty(order.shape, dtype=object)
    flat_result = result.reshape(-1)
    for position, (value, index) in enumerate(
        zip(values.reshape(-1).tolist(), order.reshape(-1).tolist(), strict=True)
    ):
        text = f"{value:f}:{index}"
        if labels is not None and index < len(labels):
            text += f":{labels[index]}"
        flat_result[position] = text
    return result


def classified_spec(spec: TensorSpec, count: int) -> TensorSpec:
    """What the output looks like once classified: BYTES, K in place of the classes."""
    shape = (*spec.shape[:-1], min(count, spec.shape[-1]) if spec.shape[-1] >= 0 else count)
    return TensorSpec(spec.name, "BYTES", shape, spec.dim_names)
