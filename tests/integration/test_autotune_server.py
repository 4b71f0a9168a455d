"""Tuning at load in a real server: a bare model directory is profiled before the server
reports ready, serves with what was chosen (metadata, /config, the ready line and
batchserve_tuning_info say so), and a restart reads the choice from the cache."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from testing.server_process import ServerProcess
from testing.synthetic_models import write_cnn_model

pytestmark = pytest.mark.integration


def test_a_bare_model_is_tuned_at_load_and_a_restart_hits_the_cache(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "cnn" / "1" / "model.onnx"
    write_cnn_model(model, channels=(8, 16, 16), size=16)
    env = {
        "BATCHSERVE_AUTOTUNE": "on",
        "BATCHSERVE_AUTOTUNE_SECONDS": "2",
        "BATCHSERVE_CACHE_DIR": str(tmp_path / "cache"),
    }
    x = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    sources = []
    for _ in range(2):
        server = ServerProcess(tmp_path / "repo", env=env)
        try:
            metadata = httpx.get(f"{server.url}/v2/models/cnn").json()["parameters"]
            tuning = metadata["tuning"]
            sources.append(tuning["source"])
            main, _, low_load = tuning["layout"].partition(" + low-load ")
            count, threads = (int(n) for n in main.split("x"))
            workers = [threads] * count
            if low_load:  # one session with every core, for lone requests
                assert low_load == f"1x{tuning['low_load_threads']}"
                workers.append(tuning["low_load_threads"])
            assert [w["threads"] for w in metadata["instances"]] == workers
            assert metadata["max_batch_size"] == tuning["max_batch_size"]
            config = httpx.get(f"{server.url}/v2/models/cnn/config").json()
            assert sum(group["count"] for group in config["instance_group"]) == len(workers)
            assert config["max_batch_size"] == tuning["max_batch_size"] >= 32
            assert server.metric(
                "batchserve_tuning_info", model="cnn", source=tuning["source"],
                layout=tuning["layout"],
            ) == 1  # fmt: skip
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                "data": x.ravel().tolist()}]}  # fmt: skip
            answer = httpx.post(f"{server.url}/v2/models/cnn/infer", json=body).json()
            got = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        finally:
            server.stop()
        said = "tuned in" if sources[-1] == "tuned" else "tuned (cached)"
        assert said in server.log, server.log
    assert sources == ["tuned", "cache"]
    assert len(list((tmp_path / "cache" / "tuning").glob("*.json"))) == 1
