"""Warm-up never fails a model that serves: synthetic inputs that the graph refuses only log a
warning, strings are numbers a graph may parse, and a configured sample that fails fails
the load (it is the user's statement of what the model takes)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from app.errors import ModelLoadError
from app.repository.config import load_model_config
from app.repository.loader import ServingDefaults, load_version
from app.repository.repository import ModelRepository
from testing.synthetic_models import save_graph
from testing.triton_models import write_repository


def write_reshape_model(root: Path, config: str) -> Path:
    """y = a 6-vector reshaped to the INT64 `shape` input: zeros (synthetic warm-up) are
    no shape a 6-vector has, so ONNX Runtime refuses them; [2, 3] is one."""
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["data"], value=helper.make_tensor(
                "data", TensorProto.FLOAT, [6], [1, 2, 3, 4, 5, 6])),
            helper.make_node("Reshape", ["data", "shape"], ["y"]),
        ],
        "reshape",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])],
    )  # fmt: skip
    save_graph(graph, root / "reshape" / "1" / "model.onnx")
    (root / "reshape" / "config.toml").write_text(config)
    return root / "reshape"


def load(model_dir: Path) -> object:
    return load_version(
        model_dir.name,
        1,
        model_dir / "1",
        config=load_model_config(model_dir),
        defaults=ServingDefaults(),
    )


def test_a_failing_synthetic_warm_up_warns_and_the_model_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = write_reshape_model(tmp_path, "max_batch_size = 0\n")
    with caplog.at_level(logging.WARNING):
        loaded = load(model_dir)
    assert "warm-up on synthetic inputs failed" in caplog.text
    assert "[warmup]" in caplog.text  # says how to warm it properly
    out = loaded.instances[0].run({"shape": np.array([2, 3], np.int64)})  # type: ignore[attr-defined]
    np.testing.assert_array_equal(out["y"], np.arange(1, 7, dtype=np.float32).reshape(2, 3))


def test_a_configured_sample_warms_it_and_a_failing_one_fails_the_load(tmp_path: Path) -> None:
    model_dir = write_reshape_model(tmp_path, 'max_batch_size = 0\n[warmup]\nfile = "warmup.npz"\n')
    np.savez(model_dir / "warmup.npz", shape=np.array([3, 2]))
    load(model_dir)  # warms on [3, 2]
    np.savez(model_dir / "warmup.npz", shape=np.array([4, 4]))
    with pytest.raises(ModelLoadError, match=r"warm-up on the \[warmup\] sample failed"):
        load(model_dir)


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"other": np.zeros(2, np.int64)}, r"holds arrays \['other'\]; the model's inputs"),
        ({"shape": np.array(["2", "3"])}, "is <U1, the model takes INT64"),
    ],
)
def test_a_sample_that_does_not_fit_the_inputs_is_refused(
    tmp_path: Path, arrays: dict[str, np.ndarray], problem: str
) -> None:
    model_dir = write_reshape_model(tmp_path, 'max_batch_size = 0\n[warmup]\nfile = "warmup.npz"\n')
    np.savez(model_dir / "warmup.npz", **arrays)
    with pytest.raises(ModelLoadError, match=problem):
        load(model_dir)


def test_strings_that_a_graph_casts_to_numbers_load_and_warm(tmp_path: Path) -> None:
    """Triton's simple_string: BYTES cast to INT32, added, cast back (empty strings, the
    old synthetic warm-up, do not parse)."""
    write_repository(tmp_path)
    loaded = load(tmp_path / "simple_string")
    session = ort.InferenceSession(str(tmp_path / "simple_string" / "1" / "model.onnx"))
    with pytest.raises(Exception, match="Cast"):
        session.run(None, {"INPUT0": np.full((1, 16), "", object),
                           "INPUT1": np.full((1, 16), "", object)})  # fmt: skip
    assert loaded.max_batch_size == 8  # type: ignore[attr-defined]


def test_every_triton_example_model_loads_in_a_repository(tmp_path: Path) -> None:
    import asyncio

    names = write_repository(tmp_path)

    async def scan() -> dict[str, str]:
        repository = ModelRepository(tmp_path)
        await repository.load_all()
        states = {e.name: e.state.value for e in repository.models.values()}
        await repository.close()
        return states

    assert asyncio.run(scan()) == dict.fromkeys(names, "READY")
