"""`batchserve profile` end to end: the CLI measures a model built here (and a copy of
digits), prints and writes its reports, writes the recommendation into config.toml with the
comments kept, and a real server then loads and serves the written config. Timing windows
are kept tiny: these tests check the flow, not the speed."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import httpx
import pytest

from app.cli import main
from testing.server_process import ServerProcess
from testing.synthetic_models import write_token_model
from tests.conftest import MODELS

pytestmark = pytest.mark.integration

FAST = ["--window-s", "0.002", "--max-seconds-per-point", "0.05", "--max-batch-size", "8"]
TOKEN_CONFIG = """# a tiny text encoder built by the test
max_batch_size = 4   # will be profiled

[padding]
inputs = { input_ids = 0, attention_mask = 0 }  # kept as it is

[batching]
max_queue_size = 100
"""


def profile(*args: str) -> int:
    return main(["profile", *args])


def test_the_cli_profiles_a_text_model_and_the_server_serves_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    write_token_model(repo / "tok" / "1" / "model.onnx")
    (repo / "tok" / "config.toml").write_text(TOKEN_CONFIG)
    out = tmp_path / "out"
    code = profile("tok", "--model-repository", str(repo), "--sequence-length", "16",
                   "--layouts", "1x1,2x1", "--out", str(out), "--json", "--write",
                   *FAST)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    assert document["schema"] == "batchserve.profile/1"
    assert (document["model"], document["version"], document["device"]) == ("tok", 1, "cpu")
    assert document["sequence_length"] == 16 and document["providers"] == ["CPUExecutionProvider"]
    measured = {(p["layout"], p["batch_size"]) for p in document["points"]}
    assert measured == {(layout, size) for layout in ("1x1", "2x1") for size in (1, 2, 4, 8)}
    assert all(p["throughput_sps"] > 0 and p["latency_ms_p50"] > 0 for p in document["points"])
    rec = document["recommendation"]
    assert rec["target_source"].startswith("default") and rec["target_ms"] >= 5.0
    # The batch the server forms is a measured one; max_batch_size keeps what the defaults
    # accept (32) on a CPU.
    assert rec["batch_size"] in (1, 2, 4, 8) and rec["max_batch_size"] == 32
    assert "profiling tok v1 on cpu" in captured.err and "1x1 batch 8:" in captured.err
    assert json.loads((out / "profile.json").read_text())["points"] == document["points"]
    assert "| layout | batch | p50 ms |" in (out / "profile.md").read_text()
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    written = (repo / "tok" / "config.toml").read_text()
    assert document["written_to"] == str(repo / "tok" / "config.toml")
    assert written.startswith("# a tiny text encoder built by the test\n")
    assert "max_batch_size = 32   # will be profiled" in written
    assert "inputs = { input_ids = 0, attention_mask = 0 }  # kept as it is" in written
    config = tomllib.loads(written)
    assert config["batching"]["max_queue_size"] == 100
    assert config["batching"]["preferred_batch_sizes"] == rec["preferred_batch_sizes"]
    layout = rec["layout"]
    assert config["instances"] == [{"device": "cpu", **layout}]

    server = ServerProcess(repo)
    try:
        ids = [[5, 6, 7, 0], [8, 9, 0, 0]]
        body = {"inputs": [
            {"name": "input_ids", "shape": [2, 4], "datatype": "INT64", "data": ids},
            {"name": "attention_mask", "shape": [2, 4], "datatype": "INT64",
             "data": [[1 if i else 0 for i in row] for row in ids]},
        ], "outputs": [{"name": "pooled"}]}  # fmt: skip
        answer = httpx.post(f"{server.url}/v2/models/tok/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"] == [2, 32]
        assert f"cpu/{layout['count'] - 1}" in server.log  # every instance written was loaded
    finally:
        assert server.stop() == 0


def test_write_on_a_copy_of_digits_keeps_its_comments_and_the_server_loads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "digits", repo / "digits", ignore=shutil.ignore_patterns("data"))
    original = (repo / "digits" / "config.toml").read_text()
    target = ["--latency-target-ms", "0.002"]  # no run of ORT takes under 1 us
    code = profile("digits", "--model-repository", str(repo), "--out", str(tmp_path / "out"),
                   "--no-plot", "--write", *target, *FAST)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cannot be met" in captured.out  # flagged, and the lowest-latency choice written
    assert f"wrote the recommendation into {repo / 'digits' / 'config.toml'}" in captured.out
    written = (repo / "digits" / "config.toml").read_text()
    for line in original.splitlines():
        if line.startswith("#") or line.startswith("max_queue_size"):
            assert line in written.splitlines()
    config = tomllib.loads(written)
    assert config["max_batch_size"] == 32 and config["batching"]["preferred_batch_sizes"] == [1]
    assert config["version_policy"] == {"latest": 1}

    server = ServerProcess(repo)
    try:
        sample = json.loads((MODELS / "digits" / "sample_request.json").read_text())
        one = {"inputs": [{**sample["inputs"][0], "shape": [1, 64],
                           "data": sample["inputs"][0]["data"][:64]}]}  # fmt: skip
        answer = httpx.post(f"{server.url}/v2/models/digits/infer", json=one)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [7]
    finally:
        assert server.stop() == 0


def test_errors_say_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert profile("nothere", "--model-repository", str(MODELS)) == 1
    assert "no model directory" in capsys.readouterr().err
    assert profile("digits", "--model-repository", str(MODELS), "--layouts", "2by1") == 1
    assert "--layouts: '2by1' is not COUNTxTHREADS" in capsys.readouterr().err
    assert profile("digits", "--model-repository", str(MODELS), "--device", "gpu") == 1
    assert "use 'cpu' or 'cuda:N'" in capsys.readouterr().err
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "digits", repo / "digits", ignore=shutil.ignore_patterns("data"))
    (repo / "digits" / "config.toml").write_text("max_batch_size = 'many'\n")
    assert profile("digits", "--model-repository", str(repo), "--no-plot") == 1
    error = capsys.readouterr().err
    assert "max_batch_size" in error and "fix the config first" in error
