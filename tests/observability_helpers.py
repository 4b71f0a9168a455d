"""Shared by the observability tests (tests/integration/test_observability_*.py): the model
repository they serve (digits batched to a latency target, a heavy model with a 2-deep
queue, a text model, and a model that fails to load), the module-scoped server on it with
its own metrics port (each test module imports the fixtures, `as` themselves, and so starts
a server of its own), a heavy model request, and polling."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from testing.server_process import ServerProcess
from testing.synthetic_models import (
    write_heavy_model,
    write_token_model,
    write_word_tokenizer,
)
from tests.conftest import DIGITS_ONNX, MODELS, ROOT

DEPLOY = ROOT / "deploy"
WAIT_S = 60.0
WORDS = ["alpha", "beta", "gamma", "delta"]


def poll(condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Call `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("observed")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "digits" / "1" / "model.onnx")
    # digits batched to a latency target, so the dashboard's latency-target panels have data.
    config = (MODELS / "digits" / "config.toml").read_text()
    assert "max_queue_delay_ms = 0" in config
    config = config.replace("max_queue_delay_ms = 0", "latency_target_ms = 1000")
    (root / "digits" / "config.toml").write_text(config)
    write_heavy_model(root / "heavy" / "1" / "model.onnx")
    (root / "heavy" / "config.toml").write_text(
        # One 8-sample request per batch, so a closed loop of 3 clients keeps it always busy.
        "max_batch_size = 8\n[batching]\nmax_queue_size = 2\n"
        '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 1\n'
    )
    # A text model, so the tokenizer stage's panel has data.
    write_token_model(root / "embed" / "1" / "model.onnx")
    write_word_tokenizer(root / "embed" / "tokenizer.json", WORDS)
    (root / "embed" / "config.toml").write_text(
        "max_batch_size = 8\n[padding]\ninputs = { input_ids = 0, attention_mask = 0 }\n"
        '[tokenizer]\ninput = "text"\nmax_length = 16\n'
        '[[instances]]\ndevice = "cpu"\ncount = 1\nthreads = 1\n'
    )
    (root / "broken" / "1").mkdir(parents=True)
    shutil.copy(DIGITS_ONNX, root / "broken" / "1" / "model.onnx")
    (root / "broken" / "config.toml").write_text("[batching]\nmax_queue_size = 0\n")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(repository, extra_args=["--metrics-port", "0"])
    yield process
    process.stop()


def heavy_body(rows: int) -> dict[str, Any]:
    x = np.random.default_rng(rows).random((rows, 16), dtype=np.float32)
    return {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
