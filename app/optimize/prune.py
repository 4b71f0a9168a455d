"""Pruning of weight initializers: structured (whole hidden units) and unstructured.

Structured: removes whole hidden units at every boundary app.optimize.prune_graph finds
between two linear layers: the producer's output columns, their bias entries and the
consumer's input rows. The matrices really shrink, so the file is smaller and dense kernels do
less work. Units are ranked by weight magnitude or by their activations on calibration data,
per layer or across layers; with reconstruction the consumer is refitted by least squares on
those activations (app.optimize.reconstruct), layer after layer in graph order, each fitted on
what the already-pruned layers before it compute.

Unstructured: zeroes the smallest-magnitude weights of each linear layer. The tensors keep
their shapes, so dense kernels compute exactly as much as before and get no faster; only the
compressed size shrinks (the report shows gzip sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from app.optimize import reconstruct
from app.optimize.errors import OptimizeError, PruneRefused
from app.optimize.prune_graph import Boundary, GraphIndex, attribute, find_boundaries

#: Operators whose weights unstructured pruning zeroes.
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
#: Global ranking keeps at least this share of every layer's units, so no layer is emptied.
MIN_KEPT_SHARE = 0.05


class Importance(StrEnum):
    MAGNITUDE = "magnitude"
    ACTIVATION = "activation"
    #: Optimal Brain Surgeon for whole units: needs reconstruction to pay off.
    SURGEON = "surgeon"


class Ranking(StrEnum):
    LAYER = "layer"  # the same share of units removed at every boundary
    GLOBAL = "global"  # one ranking over all boundaries: shares differ per layer


@dataclass(frozen=True)
class StructuredOptions:
    sparsity: float
    importance: Importance = Importance.MAGNITUDE
    ranking: Ranking = Ranking.LAYER
    reconstruct: bool = False

    @property
    def needs_calibration(self) -> bool:
        return self.reconstruct or self.importance is not Importance.MAGNITUDE

    def describe(self) -> str:
        how = f"{self.importance.value} importance, {self.ranking.value} ranking"
        fitted = ", least-squares reconstruction" if self.reconstruct else ""
        return f"pruned structured {self.sparsity:.0%} of hidden units ({how}{fitted})"


@dataclass(frozen=True)
class PruneReport:
    method: str
    sparsity: float
    layers: list[dict[str, Any]]
    parameters_before: int
    parameters_after: int
    note: str
    skipped: list[str] | None = None


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise OptimizeError(f"--sparsity must be in [0, 1), got {sparsity}")


class _Weights:
    """The initializers a structured prune rewrites, as arrays, oriented per boundary."""

    def __init__(self, index: GraphIndex, boundaries: list[Boundary]) -> None:
        self.index = index
        self.names: set[str] = set()
        for b in boundaries:
            self.names.update({b.producer.input[1], b.consumer.input[1]})
            self.names.update(n for n in (b.bias, index.output_bias(b.consumer)) if n)
        self.arrays = {n: numpy_helper.to_array(index.initializers[n]) for n in self.names}

    @staticmethod
    def _transposed(node: onnx.NodeProto) -> bool:
        return node.op_type == "Gemm" and bool(attribute(node, "transB", 0))

    def w_in(self, b: Boundary) -> np.ndarray:  # [inputs, units]
        array = self.arrays[b.producer.input[1]]
        return array.T if self._transposed(b.producer) else array

    def w_out(self, b: Boundary) -> np.ndarray:  # [units, outputs]
        array = self.arrays[b.consumer.input[1]]
        return array.T if self._transposed(b.consumer) else array

    def set_w_in(self, b: Boundary, value: np.ndarray) -> None:
        value = value.T if self._transposed(b.producer) else value
        self.arrays[b.producer.input[1]] = np.ascontiguousarray(value)

    def set_w_out(self, b: Boundary, value: np.ndarray) -> None:
        value = value.T if self._transposed(b.consumer) else value
        self.arrays[b.consumer.input[1]] = np.ascontiguousarray(value)

    def scores(
        self, b: Boundary, importance: Importance, seen: reconstruct.Activations | None
    ) -> np.ndarray:
        if importance is not Importance.MAGNITUDE:  # the surgeon ranks layers by activation
            assert seen is not None
            return reconstruct.activation_scores(seen.of(b.hidden), seen.weights, self.w_out(b))
        bias = self.arrays[b.bias] if b.bias else None
        return reconstruct.magnitude_scores(self.w_in(b), bias, self.w_out(b))

    def size(self) -> int:
        return sum(a.size for a in self.arrays.values())

    def write(self, model: onnx.ModelProto, changed_tensors: set[str]) -> None:
        """Put the arrays into `model` and drop the shapes recorded for resized tensors."""
        initializers = {t.name: t for t in model.graph.initializer}
        for name in self.names:
            initializers[name].CopyFrom(numpy_helper.from_array(self.arrays[name], name))
        kept = [v for v in model.graph.value_info if v.name not in changed_tensors]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)


def _kept_counts(
    weights: _Weights,
    boundaries: list[Boundary],
    options: StructuredOptions,
    seen: reconstruct.Activations | None,
) -> list[int]:
    """Units each boundary keeps: the same share everywhere, or one global ranking of scores
    made comparable by dividing each layer's by their root mean square."""
    units = [weights.w_in(b).shape[1] for b in boundaries]
    if options.ranking is Ranking.LAYER or options.sparsity == 0:
        return [max(1, round(n * (1.0 - options.sparsity))) for n in units]
    normalized = []
    for b in boundaries:
        score = weights.scores(b, options.importance, seen)
        normalized.append(score / (np.sqrt(np.mean(np.square(score))) or 1.0))
    everything = np.concatenate(normalized)
    kept_total = max(len(boundaries), round(everything.size * (1.0 - options.sparsity)))
    threshold = np.sort(everything)[::-1][kept_total - 1]
    return [
        max(1, round(n * MIN_KEPT_SHARE), int(np.count_nonzero(s >= threshold)))
        for n, s in zip(units, normalized, strict=True)
    ]


def prune_structured(
    model: onnx.ModelProto,
    sparsity: float | StructuredOptions,
    calibration: dict[str, np.ndarray] | None = None,
) -> PruneReport:
    """Remove hidden units at every prunable boundary, in place (a bare float: that share
    by weight magnitude, no reconstruction)."""
    options = sparsity if isinstance(sparsity, StructuredOptions) else StructuredOptions(sparsity)
    _check_sparsity(options.sparsity)
    if options.needs_calibration and calibration is None:
        raise OptimizeError(
            "activation or surgeon importance and reconstruction need calibration inputs "
            "(--calibration)"
        )
    index, boundaries, skipped = find_boundaries(model)
    weights = _Weights(index, boundaries)
    before = weights.size()
    original = None
    if options.needs_calibration and calibration is not None and options.sparsity > 0:
        original = reconstruct.capture(model, [b.hidden for b in boundaries], calibration)
    counts = _kept_counts(weights, boundaries, options, original)
    changed: set[str] = set()
    layers = []
    for b, kept in zip(boundaries, counts, strict=True):
        units = weights.w_in(b).shape[1]
        layer: dict[str, Any] = {
            "producer": b.producer.name,
            "consumer": b.consumer.name,
            "units_before": int(units),
            "units_after": int(kept),
        }
        layers.append(layer)
        if kept >= units:
            continue
        seen = original
        if original is not None and changed:  # what the already-pruned layers compute
            current = onnx.ModelProto()
            current.CopyFrom(model)
            weights.write(current, changed)
            seen = reconstruct.capture(current, [b.hidden], calibration or {})
        intercept = index.output_bias(b.consumer) is not None
        if options.importance is Importance.SURGEON and seen is not None:
            keep = reconstruct.surgeon_keep(
                seen.of(b.hidden), seen.weights, weights.w_out(b), kept, intercept=intercept
            )
        else:
            scores = weights.scores(b, options.importance, seen)
            keep = np.sort(np.argsort(-scores, kind="stable")[:kept])
        w_out = weights.w_out(b)
        weights.set_w_in(b, weights.w_in(b)[:, keep])
        if b.bias is not None:
            weights.arrays[b.bias] = np.ascontiguousarray(weights.arrays[b.bias][..., keep])
        new_out = w_out[keep]
        if options.reconstruct and seen is not None and original is not None:
            target = original.of(b.hidden) @ w_out.astype(np.float64)
            new_out = _refit(weights, b, layer, target, seen, w_out[keep], keep)
        weights.set_w_out(b, new_out.astype(w_out.dtype))
        changed.update(b.tensors)
    weights.write(model, changed)
    return PruneReport(
        method="structured",
        sparsity=options.sparsity,
        layers=layers,
        parameters_before=int(before),
        parameters_after=int(weights.size()),
        note="whole hidden units removed: smaller matrices, so smaller files and less compute",
        skipped=skipped,
    )


def _refit(
    weights: _Weights,
    b: Boundary,
    layer: dict[str, Any],
    target: np.ndarray,
    seen: reconstruct.Activations,
    removed_only: np.ndarray,
    keep: np.ndarray,
) -> np.ndarray:
    """The consumer's new weights for the kept units, fitted to what it computed before;
    the offset goes into its bias. Records the fit's error against plain removal."""
    kept_hidden = seen.of(b.hidden)[:, keep]
    bias_name = weights.index.output_bias(b.consumer)
    fitted, offset = reconstruct.refit(
        kept_hidden, target, seen.weights, intercept=bias_name is not None
    )
    before = reconstruct.relative_error(
        kept_hidden @ removed_only.astype(np.float64), target, seen.weights
    )
    after = reconstruct.relative_error(kept_hidden @ fitted + offset, target, seen.weights)
    layer["error_removed"] = round(before, 5)
    layer["error_reconstructed"] = round(after, 5)
    if bias_name is not None:
        bias = weights.arrays[bias_name]
        weights.arrays[bias_name] = (bias + offset.reshape(bias.shape)).astype(bias.dtype)
    return fitted


def prune_unstructured(model: onnx.ModelProto, sparsity: float) -> PruneReport:
    """Zero the `sparsity` smallest-magnitude weights of every weighted layer, in place."""
    if not 0.0 <= sparsity < 1.0:
        raise OptimizeError(f"--sparsity must be in [0, 1), got {sparsity}")
    initializers = {t.name: t for t in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            name = node.input[1]
            tensor = initializers.get(name)
            if tensor is not None and len(tensor.dims) >= 2 and name not in names:
                names.append(name)
    if not names:
        raise PruneRefused(
            "found no MatMul/Gemm/Conv node with an initializer weight; nothing to prune"
        )
    layers = []
    total = zeroed = 0
    for name in names:
        weights = numpy_helper.to_array(initializers[name]).copy()
        if not np.issubdtype(weights.dtype, np.floating):
            raise PruneRefused(
                f"weight '{name}' is {weights.dtype}, not float (prune before quantizing)"
            )
        count = int(weights.size * sparsity)
        if count:
            smallest = np.argpartition(np.abs(weights).reshape(-1), count - 1)[:count]
            weights.reshape(-1)[smallest] = 0
        initializers[name].CopyFrom(numpy_helper.from_array(weights, name))
        total += weights.size
        zeroed += int(np.count_nonzero(weights == 0))
        layers.append(
            {
                "weight": name,
                "size": int(weights.size),
                "zeros": int(np.count_nonzero(weights == 0)),
            }
        )
    return PruneReport(
        method="unstructured",
        sparsity=sparsity,
        layers=layers,
        parameters_before=total,
        parameters_after=total - zeroed,
        note=(
            "weights zeroed in place: tensors keep their shapes, so dense kernels compute as much "
            "as before and are no faster, and the file is as large; only its compressed size "
            "(gzip) shrinks"
        ),
    )
