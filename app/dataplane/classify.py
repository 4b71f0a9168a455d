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
    if scores.ndim < 2 or scores.dtype.kind not in "iufc":  # np.number's kinds
        raise InvalidInputError(
            f"output '{name}' has shape {list(scores.shape)} of {scores.dtype}: classification "
            "needs per-sample class scores [batch, classes]"
        )
    order = _top_indices(scores, min(count, scores.shape[-1]))
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


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k highest scores per sample, highest first, ties in index order
    and NaN last (a stable sort's order). Top-1, the common ask, is an argmax: a sort of
    1000 classes costs several times more on the event loop, per request."""
    if k == 1:
        best: np.ndarray = np.argmax(scores, axis=-1)[..., None]  # first of equal maxima
        if not np.isnan(np.take_along_axis(scores, best, axis=-1)).any():
            return best
    order: np.ndarray = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return order


def classified_spec(spec: TensorSpec, count: int) -> TensorSpec:
    """What the output looks like once classified: BYTES, K in place of the classes."""
    shape = (*spec.shape[:-1], min(count, spec.shape[-1]) if spec.shape[-1] >= 0 else count)
    return TensorSpec(spec.name, "BYTES", shape, spec.dim_names)
