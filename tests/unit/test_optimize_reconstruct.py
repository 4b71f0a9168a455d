"""Structured pruning with calibration: least-squares reconstruction, activation and surgeon
importance, global ranking, and BERT-style feed-forward blocks (graphs built in
tests/optimize_models.py, run with ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from app.optimize.prune import Importance, Ranking, StructuredOptions, prune_structured
from tests.optimize_models import (
    INNER,
    WIDTH,
    run,
    sample_inputs,
    write_bert_ffn,
    write_duplicated_units,
    write_mlp,
)


def pruned(path: Path, options: StructuredOptions, calibration: np.ndarray, out: Path) -> Path:
    model = onnx.load(str(path))
    prune_structured(model, options, {"x": calibration})
    onnx.save(model, str(out))
    return out


def error(path: Path, reference: Path, x: np.ndarray) -> float:
    want = run(reference, x)
    return float(np.linalg.norm(run(path, x) - want) / np.linalg.norm(want))


@pytest.mark.parametrize("importance", list(Importance))
def test_reconstruction_lowers_the_error_at_every_sparsity(
    tmp_path: Path, importance: Importance
) -> None:
    source = write_mlp(tmp_path / "mlp.onnx")
    calibration, held_out = sample_inputs(512, seed=1), sample_inputs(256, seed=2)
    for sparsity in (0.25, 0.5, 0.75):
        errors = {}
        for reconstruct in (False, True):
            options = StructuredOptions(sparsity, importance, Ranking.LAYER, reconstruct)
            out = pruned(source, options, calibration, tmp_path / f"{sparsity}-{reconstruct}.onnx")
            errors[reconstruct] = error(out, source, held_out)
        assert errors[True] < errors[False], (sparsity, errors)


def test_sparsity_zero_changes_nothing_bit_for_bit_with_calibration(tmp_path: Path) -> None:
    source = write_mlp(tmp_path / "mlp.onnx")
    options = StructuredOptions(0.0, Importance.SURGEON, Ranking.GLOBAL, reconstruct=True)
    out = pruned(source, options, sample_inputs(64), tmp_path / "same.onnx")
    original, same = onnx.load(str(source)), onnx.load(str(out))
    for a, b in zip(original.graph.initializer, same.graph.initializer, strict=True):
        assert a.SerializeToString() == b.SerializeToString()
    x = sample_inputs(32, seed=3)
    np.testing.assert_array_equal(run(out, x), run(source, x))


def test_the_surgeon_finds_redundant_units_and_the_refit_makes_up_for_them(
    tmp_path: Path,
) -> None:
    """Half the hidden units are scaled copies of the others: removing half with the
    surgeon's ranking and refitting loses (almost) nothing; magnitude alone cannot know."""
    source = write_duplicated_units(tmp_path / "dup.onnx")
    calibration, held_out = sample_inputs(512, seed=1), sample_inputs(256, seed=2)
    surgeon = StructuredOptions(0.5, Importance.SURGEON, Ranking.LAYER, reconstruct=True)
    plain = StructuredOptions(0.5, Importance.MAGNITUDE, Ranking.LAYER, reconstruct=False)
    exact = error(pruned(source, surgeon, calibration, tmp_path / "s.onnx"), source, held_out)
    removed = error(pruned(source, plain, calibration, tmp_path / "m.onnx"), source, held_out)
    assert exact < 0.01 and removed > 0.1, (exact, removed)


def test_global_ranking_gives_layers_different_shares(tmp_path: Path) -> None:
    model = onnx.load(str(write_mlp(tmp_path / "mlp.onnx")))
    weights = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    weights["w2"] *= 0.01  # the second hidden layer's units matter far less
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    report = prune_structured(model, StructuredOptions(0.5, ranking=Ranking.GLOBAL))
    kept = [layer["units_after"] / layer["units_before"] for layer in report.layers]
    assert kept[0] > 0.5 > kept[1]
    total = sum(layer["units_after"] for layer in report.layers)
    assert total == round(sum(layer["units_before"] for layer in report.layers) * 0.5)


def bert_inputs(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 6, WIDTH)).astype(np.float32)


def test_a_bert_feed_forward_block_is_pruned_and_the_rest_left_with_reasons(
    tmp_path: Path,
) -> None:
    source = write_bert_ffn(tmp_path / "ffn.onnx")
    x = bert_inputs(32, seed=1)

    same = onnx.load(str(source))
    report = prune_structured(same, StructuredOptions(0.0))
    onnx.save(same, str(tmp_path / "same.onnx"))
    np.testing.assert_allclose(run(tmp_path / "same.onnx", x), run(source, x), atol=1e-6)
    assert [(layer["producer"], layer["consumer"]) for layer in report.layers] == [
        ("intermediate", "output")
    ]
    # The block's output joins the residual stream: its units are left, and the report says why.
    assert report.skipped and "'output' (MatMul)" in report.skipped[0]
    assert "'residual_add' (Add)" in report.skipped[0]

    options = StructuredOptions(0.5, Importance.SURGEON, Ranking.LAYER, reconstruct=True)
    half = pruned(source, options, bert_inputs(256, seed=2), tmp_path / "half.onnx")
    shapes = {t.name: tuple(t.dims) for t in onnx.load(str(half)).graph.initializer}
    assert shapes["w_in"] == (WIDTH, INNER // 2) and shapes["b_in"] == (INNER // 2,)
    assert shapes["w_out"] == (INNER // 2, WIDTH) and shapes["w_head"] == (WIDTH, 4)
    plain = pruned(source, StructuredOptions(0.5), bert_inputs(8, seed=2), tmp_path / "p.onnx")
    assert error(half, source, x) < error(plain, source, x)


def test_calibration_is_required_for_what_needs_it(tmp_path: Path) -> None:
    model = onnx.load(str(write_mlp(tmp_path / "mlp.onnx")))
    with pytest.raises(Exception, match="need calibration inputs"):
        prune_structured(model, StructuredOptions(0.5, reconstruct=True))
