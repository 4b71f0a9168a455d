"""`batchserve optimize` end to end: the CLI writes quantized and pruned versions into a
repository, with their reports, refuses what misses the guard or cannot be pruned, and a real
server then serves the versions side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.cli import main
from testing.server_process import ServerProcess
from tests.conftest import MODELS
from tests.optimize_models import run, write_data, write_mlp, write_softmax_between

pytestmark = pytest.mark.integration

#: Timing kept short: these tests check the flow, not the speed.
FAST = ["--batch-sizes", "1", "8", "--rounds", "1", "--window-s", "0.005"]


@pytest.fixture
def repository(tmp_path: Path) -> tuple[Path, list[str]]:
    """A repository with the test MLP as `mlp` v1 serving all versions, and the CLI
    arguments that point at it and its data."""
    repo = tmp_path / "repo"
    model = write_mlp(repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.toml").write_text("max_batch_size = 16\n[version_policy]\nall = true\n")
    x, y = write_data(tmp_path / "data", model)
    common = ["--model-repository", str(repo), "--model", "mlp", "--data", str(x)]
    return repo, [*common, "--labels", str(y), *FAST]


def optimize(*args: str) -> int:
    return main(["optimize", *args])


def test_versions_written_by_the_cli_are_served_side_by_side(
    repository: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, common = repository
    assert optimize("quantize", "--mode", "static", "--max-accuracy-drop", "5", *common) == 0
    assert optimize("prune", "--from-version", "1", "--sparsity", "0.25",
                    "--max-accuracy-drop", "50", *common) == 0  # fmt: skip
    assert sorted(p.name for p in (repo / "mlp").iterdir()) == ["1", "2", "3", "config.toml"]

    for version, kind, source in ((2, "quantize", 1), (3, "prune", 1)):
        document = json.loads((repo / "mlp" / str(version) / "optimize.json").read_text())
        assert document["schema"] == "batchserve.optimize/1"
        assert (document["command"], document["version"]) == (kind, version)
        assert document["source_version"] == source
        assert document["guard"]["passed"] and not document["guard"]["forced"]
        names = [v["name"] for v in document["evaluation"]["variants"]]
        assert names == [f"v{source}", f"v{version}"]
        markdown = (repo / "mlp" / str(version) / "optimize.md").read_text()
        assert "| version | variant | size KiB |" in markdown and "- passed: accuracy" in markdown
    pruned = json.loads((repo / "mlp" / "3" / "optimize.json").read_text())
    assert [layer["units_after"] for layer in pruned["variant"]["details"]["layers"]] == [24, 18]

    out = tmp_path / "evaluation"
    assert optimize("evaluate", *common, "--out", str(out)) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [v["name"] for v in evaluation["variants"]] == ["v1", "v2", "v3"]
    assert evaluation["variants"][0]["description"] == "original"
    assert (out / "evaluation.png").stat().st_size > 0
    described = "| v3 | pruned structured 25% of hidden units (magnitude importance, layer ranking)"
    assert described in (out / "evaluation.md").read_text()

    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [3, 8], "datatype": "FP32", "data": x.tolist()}]}
    server = ServerProcess(repo)
    try:
        assert httpx.get(f"{server.url}/v2/models/mlp").json()["versions"] == ["1", "2", "3"]
        for version in (1, 2, 3):
            answer = httpx.post(f"{server.url}/v2/models/mlp/versions/{version}/infer", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == str(version)
            got = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(3, 4)
            np.testing.assert_allclose(got, run(repo / "mlp" / str(version) / "model.onnx", x),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
        latest = httpx.post(f"{server.url}/v2/models/mlp/infer", json=body).json()
        assert latest["model_version"] == "3"
    finally:
        server.stop()


def test_a_variant_that_misses_the_guard_is_not_written(
    repository: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, common = repository
    assert optimize("prune", "--sparsity", "0.9", *common) == 3
    error = capsys.readouterr().err
    assert "not written: accuracy" in error
    assert "points more than --max-accuracy-drop 1 allows" in error and "--force" in error
    assert sorted(p.name for p in (repo / "mlp").iterdir()) == ["1", "config.toml"]
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left

    assert optimize("prune", "--sparsity", "0.9", "--force", *common) == 0
    document = json.loads((repo / "mlp" / "2" / "optimize.json").read_text())
    assert document["guard"] == {**document["guard"], "passed": False, "forced": True}


def test_the_cli_refuses_a_graph_it_cannot_prune_naming_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_softmax_between(tmp_path / "repo" / "mixer" / "1" / "model.onnx")
    x, _ = write_data(tmp_path / "data", model)
    code = optimize("prune", "--model-repository", str(tmp_path / "repo"), "--model", "mixer",
                    "--data", str(x), "--sparsity", "0.5", *FAST)  # fmt: skip
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("batchserve optimize: error: cannot prune")
    assert "'mixing_softmax' (Softmax)" in error


def test_static_int8_digits_keeps_accuracy_within_one_point(tmp_path: Path) -> None:
    """The claim of the README on the shipped model: calibrated on training rows, measured
    on the held-out ones."""
    shutil.copytree(MODELS / "digits" / "1", tmp_path / "digits" / "1")
    data = MODELS / "digits" / "data"
    code = optimize("quantize", "--model-repository", str(tmp_path), "--model", "digits",
                    "--mode", "static", "--calibration", str(data / "calibration_x.npy"),
                    "--data", str(data / "test_x.npy"), "--labels", str(data / "test_y.npy"),
                    "--batch-sizes")  # fmt: skip
    assert code == 0
    document = json.loads((tmp_path / "digits" / "2" / "optimize.json").read_text())
    base, int8 = document["evaluation"]["variants"]
    assert base["accuracy"] == pytest.approx(0.975, abs=0.005)
    assert int8["accuracy_drop_pp"] <= 1.0
    assert int8["size_bytes"] < 0.35 * base["size_bytes"]


def test_prune_searches_the_highest_sparsity_within_the_budget(
    repository: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """No --sparsity: bisection on --data under --max-drop; the version written is the last
    step that passed, every step above it that was tried missed, and the report says so."""
    repo, common = repository
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.random.default_rng(11).standard_normal((512, 8)).astype(np.float32))
    assert optimize("prune", "--calibration", str(calibration), "--max-drop", "5", *common) == 0
    document = json.loads((repo / "mlp" / "2" / "optimize.json").read_text())
    details = document["variant"]["details"]
    steps = details["search"]
    chosen = details["sparsity"]
    assert len(steps) == 7 and chosen == max(s["sparsity"] for s in steps if s["passed"])
    assert all(not s["passed"] for s in steps if s["sparsity"] > chosen)
    assert 0 < chosen < 0.95 and document["guard"]["passed"]
    assert document["evaluation"]["variants"][1]["accuracy"] >= 0.95 - 1e-9
    assert "least-squares reconstruction" in document["variant"]["description"]
    assert all("error_reconstructed" in layer for layer in details["layers"])


def test_reconstruction_does_not_let_a_version_past_its_budget(
    repository: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, common = repository
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.random.default_rng(11).standard_normal((512, 8)).astype(np.float32))
    code = optimize("prune", "--sparsity", "0.95", "--calibration", str(calibration),
                    "--importance", "surgeon", *common)  # fmt: skip
    assert code == 3
    assert sorted(p.name for p in (repo / "mlp").iterdir()) == ["1", "config.toml"]
