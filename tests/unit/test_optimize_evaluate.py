"""Evaluation, the accuracy guard, reports and versions of `batchserve optimize`, on small
models built here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.optimize import guard, report, versions
from app.optimize.data import load_dataset
from app.optimize.errors import OptimizeError
from app.optimize.evaluate import BenchSettings, Candidate, Evaluation, evaluate, open_instance
from app.optimize.prune import prune_structured
from tests.optimize_models import write_data, write_mlp

FAST = BenchSettings(batch_sizes=(1, 16), rounds=2, window_s=0.005)


@pytest.fixture
def measured(tmp_path: Path) -> Evaluation:
    """The MLP against itself pruned to 75% sparsity, with the MLP's own labels."""
    base = write_mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(base))
    prune_structured(model, 0.75)
    onnx.save(model, str(tmp_path / "pruned.onnx"))
    x, y = write_data(tmp_path / "data", base)
    data = load_dataset(x, y, open_instance(base, "cpu", 1).inputs)
    candidates = [
        Candidate("v1", base, "original"),
        Candidate("v2", tmp_path / "pruned.onnx", "pruned 75%"),
    ]
    return evaluate(candidates, data, FAST)


def test_evaluation_measures_accuracy_agreement_size_and_speed(measured: Evaluation) -> None:
    base, pruned = measured.variants
    assert measured.prediction_output == "y"
    assert base.accuracy == 1.0 and base.agreement is None  # labels are its own predictions
    assert pruned.accuracy is not None and pruned.accuracy < 1.0
    assert pruned.agreement is not None and pruned.agreement.top1 == pruned.accuracy
    assert pruned.agreement.cosine_min is not None and pruned.agreement.cosine_min < 1.0
    assert pruned.agreement.max_abs_diff is not None and pruned.agreement.max_abs_diff > 0
    assert pruned.size_bytes < base.size_bytes and pruned.gzip_bytes < base.gzip_bytes
    for variant in measured.variants:
        assert [p.batch_size for p in variant.perf] == [1, 16]
        assert all(p.throughput_sps > 0 and p.runs >= 4 for p in variant.perf)
        assert variant.providers[0] == "CPUExecutionProvider"
    drop = measured.accuracy_drop_pp(pruned)
    assert drop == pytest.approx((1.0 - pruned.accuracy) * 100)


def test_reports_parse_and_hold_every_variant(measured: Evaluation, tmp_path: Path) -> None:
    data = json.loads(report.to_json(report.evaluation_dict(measured)))
    assert data["schema"] == "batchserve.evaluation/1"
    assert data["baseline"] == "v1" and data["rows"] == 256
    assert data["settings"]["batch_sizes"] == [1, 16]
    for variant in data["variants"]:
        assert {"name", "description", "size_bytes", "gzip_bytes", "accuracy", "agreement",
                "accuracy_drop_pp", "perf", "providers"} <= set(variant)  # fmt: skip
        for perf in variant["perf"]:
            assert perf["throughput_sps"] > 0 and perf["latency_ms_p50"] > 0
            assert perf["throughput_ratio"] > 0
    assert data["variants"][0]["perf"][0]["throughput_ratio"] == 1.0

    markdown = report.to_markdown(measured, "MLP")
    assert markdown.startswith("# MLP\n")
    assert "| version | variant | size KiB |" in markdown
    assert "| v2 | pruned 75% |" in markdown
    assert "batch 16: samples/s (x v1)" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith(("| v1 |", "| v2 |"))]
    assert len(rows) == 4  # quality and speed tables, a row per variant in each
    assert rows[0].count("|") == rows[1].count("|") == 10

    report.plot(measured, tmp_path / "plot.png", "MLP")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_guard_passes_within_the_drop_and_says_by_how_much_it_missed(
    measured: Evaluation,
) -> None:
    pruned = measured.variants[1]
    drop = measured.accuracy_drop_pp(pruned)
    assert drop is not None and drop > 1.0
    verdict = guard.check(guard.Guard(), measured, pruned)  # default: 1 point with labels
    assert not verdict.passed
    assert [c.criterion for c in verdict.checks] == ["max_accuracy_drop"]
    assert f"a drop of {drop:.2f} points, {drop - 1.0:.2f} points more than" in verdict.summary()
    assert guard.check(guard.Guard(max_accuracy_drop=drop + 0.01), measured, pruned).passed
    both = guard.check(guard.Guard(max_accuracy_drop=100, min_cosine=0.9999), measured, pruned)
    assert not both.passed and "below --min-cosine 0.9999" in both.summary()


def test_guard_without_labels_checks_agreement(measured: Evaluation, tmp_path: Path) -> None:
    pruned = measured.variants[1]
    unlabeled = Evaluation(
        baseline="v1",
        rows=measured.rows,
        prediction_output="y",
        settings=FAST,
        onnxruntime="",
        variants=[dataclasses.replace(v, accuracy=None) for v in measured.variants],
    )
    verdict = guard.check(guard.Guard(), unlabeled, unlabeled.variants[1])
    assert [c.criterion for c in verdict.checks] == ["min_agreement"]
    assert verdict.checks[0].limit == 0.99 and not verdict.passed
    assert pruned.agreement is not None
    assert f"{0.99 - pruned.agreement.top1:.4f} below --min-agreement" in verdict.summary()


def test_data_files_must_fit_the_model(tmp_path: Path) -> None:
    base = write_mlp(tmp_path / "mlp.onnx")
    specs = open_instance(base, "cpu", 1).inputs
    np.savez(tmp_path / "wrong.npz", inputs=np.zeros((4, 8), np.float32))
    with pytest.raises(OptimizeError, match=r"missing: \['x'\]"):
        load_dataset(tmp_path / "wrong.npz", None, specs)
    np.save(tmp_path / "narrow.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(OptimizeError, match=r"shape \[4, 3\], the model expects \[-1, 8\]"):
        load_dataset(tmp_path / "narrow.npy", None, specs)
    np.save(tmp_path / "x.npy", np.zeros((4, 8), np.float64))  # cast to the input's FP32
    np.save(tmp_path / "y.npy", np.zeros(5, np.int64))
    with pytest.raises(OptimizeError, match=r"one class label per sample, shape \[4\]"):
        load_dataset(tmp_path / "x.npy", tmp_path / "y.npy", specs)
    assert load_dataset(tmp_path / "x.npy", None, specs).inputs["x"].dtype == np.float32


def test_publish_writes_the_next_version_in_one_step(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "mlp"
    write_mlp(model_dir / "1" / "model.onnx")
    (model_dir / "4").mkdir()  # a number once used, now without a model: never reused
    number, written = versions.publish(
        model_dir, model_dir / "1" / "model.onnx", {"optimize.md": "# report\n"}
    )
    assert number == 5 and written == model_dir / "5"
    assert sorted(p.name for p in written.iterdir()) == ["model.onnx", "optimize.md"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["mlp"]  # no staging left
    assert versions.versions_on_disk(model_dir) == [1, 5]
    assert "serve only v5" in versions.serving_note(model_dir, 5)
    (model_dir / "config.toml").write_text("[version_policy]\nall = true\n")
    assert "versions [1, 5] side by side" in versions.serving_note(model_dir, 5)
    with pytest.raises(OptimizeError, match="no version 3"):
        versions.source_path(model_dir, 3)


def test_a_missing_dependency_names_the_extra_to_install() -> None:
    from app.optimize.errors import require

    with pytest.raises(OptimizeError, match=r"pip install 'batchserve\[optimize\]'"):
        require("batchserve_no_such_module", "the test")
    require("numpy", "the test")  # present: no error


def test_agreement_on_one_named_output_ignores_the_others() -> None:
    from app.optimize.evaluate import agreement

    base = {"pooled": np.eye(3, dtype=np.float32), "tokens": np.ones((3, 4), np.float32)}
    mine = {"pooled": np.eye(3, dtype=np.float32), "tokens": -np.ones((3, 4), np.float32)}
    everything = agreement(base, mine, "pooled")
    assert everything.cosine_min == pytest.approx(-1.0) and everything.max_abs_diff == 2.0
    pooled = agreement(base, mine, "pooled", only=True)
    assert pooled.top1 == 1.0 and pooled.cosine_min == pytest.approx(1.0)
    assert pooled.max_abs_diff == 0.0
