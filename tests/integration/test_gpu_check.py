"""load_tests/gpu/check.sh --cpu: the GPU check's whole flow, run on the CPU with a
tiny budget (real server, real load generators, raw ONNX Runtime), so the script a GPU
machine runs is known to work up to what only a GPU changes: the device, and the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_the_device_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    report_path = tmp_path / "gpu_check.json"

    done = subprocess.run(
        ["bash", "load_tests/gpu/check.sh", "--cpu", "--quick", "--models", "digits",
         "--out", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        # This interpreter, not whatever PYTHON says (make exports PYTHON=python3 in CI).
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["environment"]["device"] == "cpu"
    (digits,) = report["models"]
    assert digits["correctness"]["pass"] and digits["correctness"]["rows"] == 360
    assert digits["correctness"]["max_abs_diff"] == 0.0  # CPU against CPU: bit-identical
    assert {row["mode"] for row in digits["raw"]} == {"as served", "session.run"}
    assert all(row["samples_per_s"] > 0 for row in digits["raw"])
    for mode in ("on", "off"):
        served = digits["served"][mode]
        assert served["c1"]["throughput_rps"] > 0 and served["c1"]["failures"] == 0
        assert served["best"]["throughput_rps"] > 0 and served["best"]["failures"] == 0
    assert digits["served"]["off"]["best"]["mean_batch"] == 1.0
    # The one table, with every column filled, and the criteria named.
    table = report["table"].splitlines()
    row = next(line for line in table if line.startswith("| digits |"))
    assert "incomplete" not in row and row.count("|") == 11
    assert row in done.stdout
    assert set(report["criteria"]) == {
        "digits: outputs match the CPU",
        "digits: served >= 80% of raw best",
        "digits: batching on >= 3x off",
    }
