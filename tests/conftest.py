"""Shared paths and data for every test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DIGITS_ONNX = MODELS / "digits" / "1" / "model.onnx"

# Tuning at load profiles each model without [[instances]] for up to 10 s: the suite's
# servers (and the processes they start, which inherit this) run with it off and a cache of
# their own; the tests of tuning turn it on.
os.environ.setdefault("BATCHSERVE_AUTOTUNE", "off")
os.environ.setdefault("BATCHSERVE_CACHE_DIR", tempfile.mkdtemp(prefix="batchserve-cache-"))


@pytest.fixture(scope="session")
def digits_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits rows (float32 [n, 64]) and labels (int64 [n]) shipped with the model."""
    data = MODELS / "digits" / "data"
    return np.load(data / "test_x.npy"), np.load(data / "test_y.npy")
