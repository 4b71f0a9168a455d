"""`batchserve profile --write` and tuning at load configure a model alike: both entry points
run on a recorded measurement (a profile.json that `batchserve profile --json` wrote on a
2-core machine), replayed in place of timing, and the config each ends with is compared.

The replay stands in for the measurement only: what turns points into a config (the rule,
`--write`'s editor, tuning's result applied at load) is the real code of both paths. The
lone-request checks time sessions too, so they are left out of both alike."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.repository.autotune import apply_tuning, tune_version
from app.repository.config import ModelConfig
from app.repository.samples import tuning_samples
from app.tuning import at_load, low_load, measure
from app.tuning.at_load import TuneSettings
from app.tuning.plan import Plan
from app.tuning.points import Layout, Point
from testing.synthetic_models import write_cnn_model
from tests.conftest import MODELS

RECORDED = Path(__file__).resolve().parents[1] / "data"


def recorded(name: str) -> measure.Profile:
    document = json.loads((RECORDED / f"profile_{name}.json").read_text())
    fields = ("batch_size", "latency_ms_p50", "latency_ms_p90", "throughput_sps", "windows",
              "stable")  # fmt: skip
    points = [
        Point(Layout(p["count"], p["threads"]), **{name: p[name] for name in fields})
        for p in document["points"]
    ]
    return measure.Profile(points=points, providers=document["providers"])


def replay(monkeypatch: pytest.MonkeyPatch, profile: measure.Profile) -> None:
    """Every measurement of either path answers with `profile`."""

    def replayed(*args: Any, **kwargs: Any) -> measure.Profile:
        return profile

    def unchecked(model_path: Path, chosen: Plan, *args: Any) -> Plan:
        return chosen

    monkeypatch.setattr(measure, "profile", replayed)
    monkeypatch.setattr(low_load, "for_lone_requests", unchecked)
    monkeypatch.setattr(at_load, "for_lone_requests", unchecked)


def served_by(config: ModelConfig) -> tuple[Any, ...]:
    instances = [(i.device, i.count, i.threads, i.low_load_only) for i in config.instances]
    return instances, config.max_batch_size, config.batching.preferred_batch_sizes


def write_model(name: str, path: Path) -> None:
    path.parent.mkdir(parents=True)
    if name == "digits":
        shutil.copy(MODELS / "digits" / "1" / "model.onnx", path)
    else:
        write_cnn_model(path)  # the zero-config bench's small CNN


@pytest.mark.parametrize("name", ["digits", "small-cnn"])
def test_profile_write_and_tuning_at_load_configure_a_model_alike(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = recorded(name)
    replay(monkeypatch, profile)
    repository = tmp_path / "models"
    model_dir = repository / name
    write_model(name, model_dir / "1" / "model.onnx")

    settings = TuneSettings(cache_dir=tmp_path / "cache")
    samples = tuning_samples(ModelConfig(), model_dir)
    tuning = tune_version(model_dir / "1" / "model.onnx", ModelConfig(), settings=settings,
                          label=name, samples=samples)  # fmt: skip
    assert tuning.source == "tuned", tuning.reason
    at_load_config = apply_tuning(tuning, ModelConfig())

    written = main(["profile", name, "--model-repository", str(repository), "--no-plot",
                    "--write", "--out", str(tmp_path / "out")])  # fmt: skip
    assert written == 0
    toml = tomllib.loads((model_dir / "config.toml").read_text())
    profile_config = ModelConfig.model_validate(toml)

    assert served_by(profile_config) == served_by(at_load_config)
    assert tuning.batch_size in (
        profile_config.batching.preferred_batch_sizes or [profile_config.max_batch_size]
    )
