"""CPU sessions keep the graph ONNX Runtime optimized, and later sessions read it with the
optimizer off: the same outputs, bit for bit, as a session made from the model itself;
a kept file that does not load is optimized and written again; one-thread workers of a
line share one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.repository.config import ModelConfig
from app.repository.instances import build_instances, optimized_graph_path
from testing.synthetic_models import write_cnn_model, write_heavy_model


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "cnn" / "1" / "model.onnx"
    write_cnn_model(path)
    return path


def plain_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def feeds_for(path: Path) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return {
        i.name: rng.standard_normal([2 if not isinstance(d, int) else d for d in i.shape]).astype(
            np.float32
        )
        for i in session.get_inputs()
    }


def test_the_optimized_graph_is_kept_and_later_sessions_answer_the_same(
    model: Path, tmp_path: Path
) -> None:
    kept_in = tmp_path / "optimized"
    config = ModelConfig.model_validate({"instances": [{"device": "cpu", "threads": 1}]})
    feeds = feeds_for(model)
    first = build_instances("cnn", 1, model, config, optimized_dir=kept_in)[0]
    kept = optimized_graph_path(kept_in, model)
    assert kept.is_file() and list(kept_in.iterdir()) == [kept]  # no scratch file left
    again = build_instances("cnn", 1, model, config, optimized_dir=kept_in)[0]
    want = plain_outputs(model, feeds)
    for instance in (first, again):
        got = instance.run(feeds)
        for expected, name in zip(want, got, strict=True):
            np.testing.assert_array_equal(got[name], expected)


def test_a_kept_graph_that_does_not_load_is_optimized_again(model: Path, tmp_path: Path) -> None:
    kept_in = tmp_path / "optimized"
    kept = optimized_graph_path(kept_in, model)
    kept_in.mkdir()
    kept.write_bytes(b"not a graph")
    config = ModelConfig.model_validate({"instances": [{"device": "cpu", "threads": 1}]})
    feeds = feeds_for(model)
    instance = build_instances("cnn", 1, model, config, optimized_dir=kept_in)[0]
    assert kept.read_bytes() != b"not a graph"
    got = instance.run(feeds)
    for expected, name in zip(plain_outputs(model, feeds), got, strict=True):
        np.testing.assert_array_equal(got[name], expected)


def test_one_thread_workers_of_a_line_share_one_session(tmp_path: Path) -> None:
    path = tmp_path / "heavy" / "1" / "model.onnx"
    write_heavy_model(path, width=8, hidden=64, blocks=2)
    config = ModelConfig.model_validate(
        {"instances": [{"device": "cpu", "count": 3, "threads": 1},
                       {"device": "cpu", "count": 2, "threads": 2}]}
    )  # fmt: skip
    instances = build_instances("heavy", 1, path, config)
    sessions = {id(instance._session) for instance in instances}
    assert len(instances) == 5 and len(sessions) == 3  # one shared, two of their own
    assert [i.label for i in instances] == [f"cpu/{n}" for n in range(5)]
