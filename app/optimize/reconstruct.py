"""Calibration activations for structured pruning: what each hidden layer computes on
representative inputs, which units matter to the layer after it, and the least-squares refit
that lets the kept units stand in for the removed ones.

The refit is the post-training step of Kwon et al. (2022) and of SparseGPT, for whole units:
with H the kept units' activations and T what the unpruned layer computed from all of them,
the consumer's weights become argmin ||H W + d - T||^2 + lambda ||W||^2 (d folded into its
bias when it has one; lambda a small share of H's mean energy, for stability). The kept units
often correlate with the removed ones, so the fitted layer recovers much of what they did.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from app.optimize.errors import OptimizeError

#: Samples per ONNX Runtime run while capturing activations (bounds the memory of one run).
CAPTURE_CHUNK = 32
#: At most this many activation rows (samples, or tokens of sequence models) per layer: enough
#: to fit thousands of units, a bounded cost for long calibration sets.
MAX_ROWS = 40_000
#: The ridge term, as a share of the mean squared activation of the kept units.
RIDGE = 1e-3
#: The calibration input that marks real tokens; padded positions are left out of the fit.
MASK_INPUT = "attention_mask"


@dataclass(frozen=True)
class Activations:
    """Hidden tensors on the calibration data as [rows, units] float64, one row per sample
    (sequence models: per real token), and a weight per row: 1, or 1 / the sample's tokens,
    so that every sample counts once, as the mean pooling of embedding models weighs them."""

    values: dict[str, np.ndarray]
    weights: np.ndarray

    def of(self, name: str) -> np.ndarray:
        return self.values[name]


def capture(
    model: onnx.ModelProto, tensors: Sequence[str], calibration: dict[str, np.ndarray]
) -> Activations:
    """Each of `tensors` on the calibration inputs. Blocking: ONNX Runtime runs the graph."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in present:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own types; any failure is the same to the user
        raise OptimizeError(f"cannot run the graph to capture its activations: {exc}") from None
    feeds_names = [i.name for i in session.get_inputs()]
    missing = [n for n in feeds_names if n not in calibration]
    if missing:
        raise OptimizeError(f"the calibration data lacks the model's inputs {missing}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    weights: list[np.ndarray] = []
    for feeds, mask in _chunks({n: calibration[n] for n in feeds_names}):
        values = [np.asarray(v) for v in session.run(list(tensors), feeds)]
        rows = None
        for name, value in zip(tensors, values, strict=True):
            if mask is not None and value.ndim == 3 and mask.shape == value.shape[:2]:
                value = value[mask]
                rows = np.repeat(1.0 / np.maximum(mask.sum(axis=1), 1), mask.sum(axis=1))
            parts[name].append(value.reshape(-1, value.shape[-1]))
        weights.append(rows if rows is not None else np.ones(len(parts[tensors[0]][-1])))
    every = np.concatenate(weights)
    chosen = slice(None)
    if len(every) > MAX_ROWS:  # evenly spaced, so every part of the data is seen
        chosen = np.linspace(0, len(every) - 1, MAX_ROWS).astype(np.int64)  # type: ignore[assignment]
    return Activations(
        values={n: np.concatenate(c)[chosen].astype(np.float64) for n, c in parts.items()},
        weights=every[chosen] / every[chosen].mean(),
    )


def _chunks(
    inputs: dict[str, np.ndarray],
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Runs of CAPTURE_CHUNK samples. With an attention mask, samples go shortest first and
    each run is cut to its longest real sequence, so padding costs little compute; the order
    is deterministic, so two captures of one data set line up row for row."""
    rows = len(next(iter(inputs.values())))
    mask = inputs.get(MASK_INPUT)
    if mask is None or mask.ndim != 2:
        for start in range(0, rows, CAPTURE_CHUNK):
            yield {n: a[start : start + CAPTURE_CHUNK] for n, a in inputs.items()}, None
        return
    lengths = np.count_nonzero(mask, axis=1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, rows, CAPTURE_CHUNK):
        chosen = order[start : start + CAPTURE_CHUNK]
        used = np.flatnonzero(mask[chosen].any(axis=0))  # any padding side
        width = int(used[-1]) + 1 if used.size else 1
        feeds = {
            n: a[chosen][:, :width] if a.ndim == 2 and a.shape == mask.shape else a[chosen]
            for n, a in inputs.items()
        }
        yield feeds, feeds[MASK_INPUT].astype(bool)


def magnitude_scores(w_in: np.ndarray, bias: np.ndarray | None, w_out: np.ndarray) -> np.ndarray:
    """|incoming weights and bias| x |outgoing weights| per unit: invariant to the rescaling
    a ReLU network allows between layers. w_in is [inputs, units], w_out [units, outputs]."""
    incoming = np.square(w_in.astype(np.float64)).sum(axis=0)
    if bias is not None:
        incoming += np.square(bias.reshape(-1).astype(np.float64))
    outgoing = np.square(w_out.astype(np.float64)).sum(axis=1)
    return np.asarray(np.sqrt(incoming) * np.sqrt(outgoing))


def activation_scores(hidden: np.ndarray, weights: np.ndarray, w_out: np.ndarray) -> np.ndarray:
    """|activations| x |outgoing weights| per unit (the structured form of Wanda's score): a
    unit's share of what the next layer receives on the calibration data."""
    energy = np.sqrt(np.average(np.square(hidden), axis=0, weights=weights))
    return np.asarray(energy * np.linalg.norm(w_out.astype(np.float64), axis=1))


def relative_error(prediction: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """||prediction - target|| / ||target|| over all rows (weighted) and outputs."""
    root = np.sqrt(weights)[:, None]
    scale = float(np.linalg.norm(target * root))
    return float(np.linalg.norm((prediction - target) * root)) / scale if scale else 0.0


def _prepared(
    matrix: np.ndarray, weights: np.ndarray, intercept: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled by sqrt(weight), centred on the weighted mean when an intercept absorbs
    it; and that mean (zeros without an intercept)."""
    mean = np.average(matrix, axis=0, weights=weights) if intercept else np.zeros(matrix.shape[1])
    return (matrix - mean) * np.sqrt(weights)[:, None], mean


def _gram(h: np.ndarray, ridge: float) -> np.ndarray:
    gram = h.T @ h
    gram[np.diag_indices_from(gram)] += ridge * float(np.mean(np.diag(gram))) + 1e-12
    return np.asarray(gram)


def refit(
    hidden: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    *,
    intercept: bool,
    ridge: float = RIDGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights [kept, outputs] and an offset [outputs] with hidden @ W + offset ~ target in
    weighted least squares. Without `intercept` (a consumer with no bias to absorb it) the
    offset is zero."""
    h, mean_h = _prepared(hidden, weights, intercept)
    t, mean_t = _prepared(target, weights, intercept)
    fitted = np.linalg.solve(_gram(h, ridge), h.T @ t)
    return fitted, mean_t - mean_h @ fitted


def surgeon_keep(
    hidden: np.ndarray,
    weights: np.ndarray,
    w_out: np.ndarray,
    kept: int,
    *,
    intercept: bool,
    ridge: float = RIDGE,
) -> np.ndarray:
    """The `kept` units Optimal Brain Surgeon leaves, for whole units: one at a time, remove
    the unit whose loss, with the remaining units refitted to make up for it, adds the least
    error to the next layer's input, ||w_j||^2 / [G^-1]_jj, then update the weights and the
    inverse Gram matrix as OBS does. Returns the kept indices, ascending."""
    inverse = np.linalg.inv(_gram(_prepared(hidden, weights, intercept)[0], ridge))
    w = w_out.astype(np.float64).copy()
    alive = np.ones(len(w), dtype=bool)
    for _ in range(len(w) - kept):
        diagonal = np.diag(inverse)
        cost = np.where(alive, np.square(w).sum(axis=1) / np.maximum(diagonal, 1e-300), np.inf)
        j = int(np.argmin(cost))
        column = inverse[:, j].copy()
        w -= np.outer(column / diagonal[j], w[j])
        inverse -= np.outer(column / diagonal[j], column)
        alive[j] = False
        w[j] = 0.0
    return np.flatnonzero(alive)
