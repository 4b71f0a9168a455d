"""Structured and unstructured pruning on small MLPs built here, and graphs the structured
pruner must refuse (naming the node that stopped it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from app.optimize.errors import PruneRefused
from app.optimize.prune import prune_structured, prune_unstructured
from tests.optimize_models import (
    HIDDEN1,
    HIDDEN2,
    mlp_reference,
    mlp_weights,
    run,
    sample_inputs,
    write_mlp,
    write_residual,
    write_shared_weight,
    write_softmax_between,
)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def kept_columns(original: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """Which of `original`'s columns `pruned` kept, in order."""
    return np.array([next(j for j in range(original.shape[1])
                          if np.array_equal(original[:, j], col)) for col in pruned.T])  # fmt: skip


def test_structured_removes_hidden_units_and_computes_the_masked_network(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    report = prune_structured(model, 0.5)
    pruned_path = tmp_path / "pruned.onnx"
    onnx.save(model, str(pruned_path))

    assert [(r["producer"], r["consumer"]) for r in report.layers] == [
        ("fc1", "fc2"),
        ("fc2", "fc3"),
    ]
    assert [r["units_after"] for r in report.layers] == [HIDDEN1 // 2, HIDDEN2 // 2]
    w = initializers(model)
    assert w["w1"].shape == (8, HIDDEN1 // 2) and w["b1"].shape == (HIDDEN1 // 2,)
    assert w["w2"].shape == (HIDDEN2 // 2, HIDDEN1 // 2)  # transB: rows are units
    assert w["b2"].shape == (1, HIDDEN2 // 2) and w["w3"].shape == (HIDDEN2 // 2, 4)
    assert pruned_path.stat().st_size < 0.5 * path.stat().st_size
    assert report.parameters_after < 0.5 * report.parameters_before

    # The pruned graph computes exactly the original with the removed units zeroed.
    original = mlp_weights()
    keep1 = kept_columns(original["w1"], w["w1"])
    keep2 = kept_columns(original["w2"][:, keep1].T, w["w2"].T)
    x = sample_inputs(64)
    expected = mlp_reference(x, original, keep1, keep2)
    np.testing.assert_allclose(run(pruned_path, x), expected, rtol=1e-4, atol=1e-4)


def test_structured_keeps_the_most_important_units(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    original = mlp_weights()
    original["w1"][:, 5] *= 100.0  # unit 5 of the first hidden layer dominates
    original["w1"][:, 9] = 0.0  # unit 9 does nothing but its bias
    original["b1"][9] = 0.0
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(original[tensor.name], tensor.name))
    prune_structured(model, 0.9)
    keep1 = kept_columns(original["w1"], initializers(model)["w1"])
    assert 5 in keep1 and 9 not in keep1


def test_sparsity_zero_changes_nothing(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    prune_structured(model, 0.0)
    onnx.save(model, str(tmp_path / "same.onnx"))
    x = sample_inputs(16)
    np.testing.assert_array_equal(run(tmp_path / "same.onnx", x), run(path, x))


@pytest.mark.parametrize(
    ("writer", "named"),
    [
        (write_shared_weight, ["'w' is shared", "'first' (MatMul)", "'second' (MatMul)"]),
        (write_softmax_between, ["'mixing_softmax' (Softmax)", "not an elementwise"]),
        (write_residual, ["'skip_add' (Add)", "tensor 'a' feeds"]),
    ],
    ids=["shared-weight", "softmax-between", "residual-branch"],
)
def test_refuses_graphs_it_cannot_prune_safely_naming_the_node(
    tmp_path: Path, writer: object, named: list[str]
) -> None:
    path = writer(tmp_path / "model.onnx")  # type: ignore[operator]
    model = onnx.load(str(path))
    before = model.SerializeToString()
    with pytest.raises(PruneRefused) as refused:
        prune_structured(model, 0.5)
    for text in named:
        assert text in str(refused.value)
    assert model.SerializeToString() == before  # refused before anything changed


def test_refuses_a_quantized_graph_saying_to_prune_first(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    path = write_mlp(tmp_path / "mlp.onnx")
    quantize_dynamic(str(path), str(tmp_path / "q.onnx"))
    with pytest.raises(PruneRefused, match="already quantized"):
        prune_structured(onnx.load(str(tmp_path / "q.onnx")), 0.5)


def test_unstructured_zeroes_the_smallest_weights_but_keeps_shapes(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    original = mlp_weights()
    report = prune_unstructured(model, 0.5)
    pruned = initializers(model)
    for name in ("w1", "w2", "w3"):
        assert pruned[name].shape == original[name].shape
        zeroed = pruned[name] == 0
        assert zeroed.mean() == pytest.approx(0.5, abs=0.02)
        # every zeroed weight was no larger than every kept one
        assert np.abs(original[name][zeroed]).max() <= np.abs(original[name][~zeroed]).min()
    np.testing.assert_array_equal(pruned["b1"], original["b1"])  # biases untouched
    assert "no faster" in report.note
    onnx.save(model, str(tmp_path / "sparse.onnx"))
    assert run(tmp_path / "sparse.onnx", sample_inputs(4)).shape == (4, 4)


def test_sparsity_out_of_range_is_an_error(tmp_path: Path) -> None:
    model = onnx.load(str(write_mlp(tmp_path / "mlp.onnx")))
    with pytest.raises(Exception, match="sparsity must be in"):
        prune_structured(model, 1.0)
