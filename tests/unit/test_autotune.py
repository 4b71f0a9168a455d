"""Tuning at load (app.tuning.at_load) on real ONNX models: what it chooses and when,
what its cache holds and when it is not trusted, and what a failing profile leaves."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.cores import available_cores
from app.cpuinfo import cpu_identity
from app.repository.autotune import apply_tuning, model_limits, tune_version
from app.repository.config import ModelConfig, load_model_config
from app.repository.loader import ServingDefaults, load_version
from app.repository.samples import tuning_samples
from app.service import _layout
from app.tensors import TensorSpec
from app.tuning import measure
from app.tuning.at_load import TuneSettings, _cache_key
from app.tuning.cache import TuningCache
from app.tuning.points import Point
from app.tuning.result import Tuning
from testing.synthetic_models import save_graph, write_heavy_model
from tests.conftest import MODELS
from tests.image_models import encoded, plain, write_colour_model

#: Short windows and a 1 s budget: these tests check the mechanism, not the measurement.
FAST = {"budget_s": 1.0, "window_s": 0.02, "point_s": 0.1}


@pytest.fixture
def settings(tmp_path: Path) -> TuneSettings:
    return TuneSettings(enabled=True, cache_dir=tmp_path / "cache", **FAST)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "mlp" / "1" / "model.onnx"
    write_heavy_model(path, width=16, hidden=64, blocks=1)
    return path


def run_tune(model: Path, settings: TuneSettings, config: ModelConfig | None = None) -> Tuning:
    config = config or ModelConfig()
    samples = tuning_samples(config, model.parent.parent)
    return tune_version(model, config, settings=settings, label="test", samples=samples)


def entries(settings: TuneSettings) -> list[Path]:
    assert settings.cache_dir is not None
    return sorted((settings.cache_dir / "tuning").glob("*.json"))


def test_a_bare_model_is_tuned_once_then_read_from_the_cache(
    model: Path, settings: TuneSettings
) -> None:
    tuned = run_tune(model, settings)
    assert tuned.source == "tuned", tuned
    assert tuned.count is not None and tuned.threads is not None
    assert tuned.count * tuned.threads == available_cores()  # layouts use every core
    assert tuned.max_batch_size is not None
    assert tuned.max_batch_size >= 32  # requests the untuned default took are still taken
    assert len(entries(settings)) == 1

    again = run_tune(model, settings)
    assert again.source == "cache"
    assert (again.count, again.threads, again.max_batch_size) == (
        tuned.count, tuned.threads, tuned.max_batch_size,
    )  # fmt: skip

    config = apply_tuning(again, ModelConfig())
    assert [(line.device, line.count, line.threads) for line in config.instances] == [
        ("cpu", tuned.count, tuned.threads)
    ]
    assert config.max_batch_size == tuned.max_batch_size
    assert tuned.batch_size is not None and 1 <= tuned.batch_size <= tuned.max_batch_size
    preferred = [tuned.batch_size] if tuned.batch_size < tuned.max_batch_size else []
    assert config.batching.preferred_batch_sizes == preferred


def test_every_point_is_measured_twice_on_a_cpu(
    model: Path, settings: TuneSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU each (layout, batch) is measured in two passes, as `batchserve profile`
    does, and keeps the faster: a busy spell of a shared machine then spoils a point only if
    it falls on both."""
    profiles: list[list[tuple[str, int]]] = []  # per measure.profile call, what it measured
    real_point, real_profile = measure.measure_point, measure.profile

    def counted_point(*args: Any, **kwargs: Any) -> Point:
        point = real_point(*args, **kwargs)
        profiles[-1].append((point.layout.label, point.batch_size))
        return point

    def counted_profile(*args: Any, **kwargs: Any) -> measure.Profile:
        profiles.append([])
        return real_profile(*args, **kwargs)

    monkeypatch.setattr(measure, "measure_point", counted_point)
    monkeypatch.setattr(measure, "profile", counted_profile)
    assert run_tune(model, settings).source == "tuned"
    tuning = profiles[0]  # then the lone-request checks, a point each
    assert len(set(tuning)) > 1
    assert all(tuning.count(key) == 2 for key in tuning), tuning


def test_what_the_config_sets_is_kept(model: Path, settings: TuneSettings, tmp_path: Path) -> None:
    (tmp_path / "mlp" / "config.toml").write_text(
        "max_batch_size = 8\n[batching]\npreferred_batch_sizes = [8]\n"
    )
    config = load_model_config(tmp_path / "mlp")
    tuned = run_tune(model, settings, config)
    assert tuned.source == "tuned"
    applied = apply_tuning(tuned, config)
    assert applied.max_batch_size == 8
    assert applied.batching.preferred_batch_sizes == [8]


def test_a_changed_model_file_is_tuned_again(model: Path, settings: TuneSettings) -> None:
    assert run_tune(model, settings).source == "tuned"
    write_heavy_model(model, width=16, hidden=96, blocks=1)
    assert run_tune(model, settings).source == "tuned"
    assert len(entries(settings)) == 2


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """This thread (and the sessions it starts) on one core, as on a smaller machine."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to take one away")
def test_fewer_cores_are_tuned_again(model: Path, settings: TuneSettings) -> None:
    assert run_tune(model, settings).source == "tuned"
    with one_core():
        on_one = run_tune(model, settings)
    assert on_one.source == "tuned"
    assert (on_one.count, on_one.threads) == (1, 1)


@pytest.mark.parametrize(
    ("field", "other"),
    [("onnxruntime", "1.0.0"), ("device", "x86_64 another CPU flags:000000000000")],
)
def test_an_entry_for_another_onnxruntime_or_cpu_is_not_used(
    model: Path, settings: TuneSettings, field: str, other: str
) -> None:
    """An entry stored by another ONNX Runtime version, or on another kind of CPU (a cache
    directory shared by nodes of several kinds), is never read; the same entry under this
    machine's key is (the control: the entry itself is a valid tuning)."""
    assert settings.cache_dir is not None
    cache = TuningCache(settings.cache_dir)
    samples = tuning_samples(ModelConfig(), model.parent.parent)
    key = _cache_key(model, model_limits(ModelConfig()), samples)
    stored = {"source": "tuned", "count": 3, "threads": 5, "max_batch_size": 64,
              "batch_size": 64, "seconds": 1.0, "inputs": "synthetic inputs",
              "reason": "", "spinning": False, "low_load_threads": None,
              "low_load_spinning": False, "device": "cpu"}  # fmt: skip
    cache.write({**key, field: other}, stored)
    assert key["onnxruntime"] == ort.__version__
    assert key["device"] == cpu_identity() and key["device"] != other
    assert run_tune(model, settings).count != 3

    cache.write(key, stored)
    cached = run_tune(model, settings)
    assert (cached.source, cached.count, cached.threads) == ("cache", 3, 5)


def test_an_unreadable_or_foreign_entry_is_measured_again(
    model: Path, settings: TuneSettings
) -> None:
    assert run_tune(model, settings).source == "tuned"
    (entry,) = entries(settings)
    entry.write_text("{not json")
    assert run_tune(model, settings).source == "tuned"

    document = json.loads(entry.read_text())
    document["key"]["cores"] = 999  # a hand-copied file of another machine
    entry.write_text(json.dumps(document))
    assert run_tune(model, settings).source == "tuned"

    document = json.loads(entry.read_text())
    document["result"]["count"] = "many"
    entry.write_text(json.dumps(document))
    assert run_tune(model, settings).source == "tuned"


def test_instances_in_the_config_are_never_tuned(
    model: Path, settings: TuneSettings, tmp_path: Path
) -> None:
    (tmp_path / "mlp" / "config.toml").write_text("[[instances]]\ncount = 1\n")
    tuning = run_tune(model, settings, load_model_config(tmp_path / "mlp"))
    assert tuning.source == "config"
    assert apply_tuning(tuning, ModelConfig()) == ModelConfig()
    assert entries(settings) == []


def test_autotune_false_or_the_setting_off_keeps_the_defaults(
    model: Path, settings: TuneSettings, tmp_path: Path
) -> None:
    (tmp_path / "mlp" / "config.toml").write_text("autotune = false\n")
    config = load_model_config(tmp_path / "mlp")
    assert run_tune(model, settings, config).source == "off"
    off = TuneSettings(enabled=False, cache_dir=settings.cache_dir)
    tuning = run_tune(model, off)
    assert (tuning.source, tuning.reason) == ("off", "BATCHSERVE_AUTOTUNE is off")
    assert entries(settings) == []


def write_batch_of_one_model(path: Path) -> None:
    """x FP32 [batch, 4] reshaped to [1, 4]: the graph declares a batch axis, but only
    batch 1 runs, so every profile past batch 1 fails."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "batch_of_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")],
    )
    save_graph(graph, path)


def test_a_model_whose_profile_fails_serves_on_the_defaults(
    settings: TuneSettings, tmp_path: Path
) -> None:
    version_dir = tmp_path / "one" / "1"
    write_batch_of_one_model(version_dir / "model.onnx")
    # Budget enough to reach batch 2 however loaded the machine: the profile fails there.
    settings = replace(settings, budget_s=10.0)
    loaded = load_version(
        "one", 1, version_dir, config=ModelConfig(), defaults=ServingDefaults(tuning=settings)
    )
    assert loaded.tuning is not None and loaded.tuning.source == "failed"
    assert "profiling failed" in loaded.tuning.reason
    assert "Reshape" in loaded.tuning.reason or "shape" in loaded.tuning.reason
    assert len(loaded.instances) == 1 and loaded.max_batch_size == 32  # today's defaults
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(loaded.instances[0].run({"x": x})["y"], x)
    assert "tuning" in loaded.metadata([1])["parameters"]
    assert entries(settings) == []  # a failure is not cached: the next load tries again


DIGITS_DIR = MODELS / "digits"


def digits_copy(tmp_path: Path, request: bytes | None) -> Path:
    """models/digits' model.onnx in a bare directory, with `request` as its
    sample_request.json; the model path."""
    path = tmp_path / "digits" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    shutil.copy(DIGITS_DIR / "1" / "model.onnx", path)
    if request is not None:
        (tmp_path / "digits" / "sample_request.json").write_bytes(request)
    return path


def test_the_directorys_sample_request_is_measured_on(
    settings: TuneSettings, tmp_path: Path
) -> None:
    request = (DIGITS_DIR / "sample_request.json").read_bytes()
    model = digits_copy(tmp_path, request)
    tuned = run_tune(model, settings)
    assert (tuned.source, tuned.inputs) == ("tuned", "sample_request.json")
    assert run_tune(model, settings).source == "cache"
    # Other inputs are another measurement.
    document = json.loads(request)
    document["inputs"][0]["data"] = [0.0] * len(document["inputs"][0]["data"])
    (model.parent.parent / "sample_request.json").write_text(json.dumps(document))
    assert run_tune(model, settings).source == "tuned"


def test_a_sample_request_that_does_not_fit_fails_the_profile_saying_so(
    settings: TuneSettings, tmp_path: Path
) -> None:
    model = digits_copy(tmp_path, b'{"inputs": [{"name": "pixels", "datatype": "FP32", '
                                  b'"shape": [1, 2], "data": [0, 1]}]}')  # fmt: skip
    tuning = run_tune(model, settings)
    assert tuning.source == "failed"
    assert "sample_request.json does not fit the model" in tuning.reason
    assert "pixels" in tuning.reason


@pytest.mark.skipif(not (MODELS / "minilm" / "1" / "model.onnx").is_file(),
                    reason="make text-model builds it")  # fmt: skip
def test_a_text_models_sample_texts_are_tokenized_to_measure_on(settings: TuneSettings) -> None:
    minilm = MODELS / "minilm"
    tuned = run_tune(minilm / "1" / "model.onnx", settings, load_model_config(minilm))
    assert (tuned.source, tuned.inputs) == ("tuned", "sample_request.json"), tuned.reason


def colours_with_request(tmp_path: Path, image: bytes) -> tuple[Path, ModelConfig]:
    """tests/image_models' colour classifier, whose sample_request.json sends `image` as
    JSON does (base64): its model path and config."""
    model_dir = write_colour_model(tmp_path)
    request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(image).decode()]}]}  # fmt: skip
    (model_dir / "sample_request.json").write_text(json.dumps(request))
    return model_dir / "1" / "model.onnx", load_model_config(model_dir)


def test_an_image_models_sample_image_is_decoded_to_measure_on(
    settings: TuneSettings, tmp_path: Path
) -> None:
    model, config = colours_with_request(tmp_path, encoded(plain((255, 0, 0)), "JPEG"))
    specs = (TensorSpec("input", "FP32", (-1, 3, 32, 32)),)
    feeds = tuning_samples(config, model.parent.parent).read(specs, ())
    assert feeds is not None and feeds["input"].shape == (1, 3, 32, 32)
    # Decoded and scaled as the server's [image] step does (mean 0, std 1: pixels / 255).
    np.testing.assert_allclose(feeds["input"][0].mean(axis=(1, 2)), [1, 0, 0], atol=0.01)
    tuned = run_tune(model, settings, config)
    assert (tuned.source, tuned.inputs) == ("tuned", "sample_request.json"), tuned.reason


def test_a_sample_image_that_cannot_be_decoded_fails_the_profile_saying_so(
    settings: TuneSettings, tmp_path: Path
) -> None:
    model, config = colours_with_request(tmp_path, b"not an image at all")
    tuning = run_tune(model, settings, config)
    assert tuning.source == "failed"
    assert "sample_request.json does not fit the model" in tuning.reason
    assert "image 0: not an image file" in tuning.reason


def test_spinning_reaches_the_sessions_from_the_config_or_a_tuning(tmp_path: Path) -> None:
    """`spinning = true` on an [[instances]] line (or chosen by tuning) makes sessions
    whose intra-op threads spin between operators and stop when a run returns; every other
    session sleeps between operators."""
    from app.runtime import InstanceOptions, OnnxInstance

    def spins(options: InstanceOptions) -> tuple[str, str]:
        instance = OnnxInstance(MODELS / "digits" / "1" / "model.onnx", "cpu", threads=2,
                                index=0, options=options)  # fmt: skip
        chosen = instance._session.get_session_options()
        return (
            str(chosen.get_session_config_entry("session.intra_op.allow_spinning")),
            str(chosen.get_session_config_entry("session.force_spinning_stop")),
        )

    assert spins(InstanceOptions()) == ("0", "0")
    assert spins(InstanceOptions(spinning=True)) == ("1", "1")
    config_file = tmp_path / "config.toml"
    config_file.write_text('[[instances]]\ndevice = "cpu"\nthreads = 2\nspinning = true\n')
    assert load_model_config(tmp_path).instances[0].spinning is True
    tuned = Tuning("tuned", count=1, threads=2, max_batch_size=32, batch_size=8, spinning=True)
    assert apply_tuning(tuned, ModelConfig()).instances[0].spinning is True
    assert "spinning" in tuned.describe() and tuned.metadata()["spinning"] is True


def test_a_low_load_only_line_reaches_the_batcher(tmp_path: Path, settings: TuneSettings) -> None:
    """`low_load_only = true` on an [[instances]] line marks exactly its workers."""
    version_dir = tmp_path / "mlp" / "1"
    version_dir.mkdir(parents=True)
    shutil.copy(MODELS / "digits" / "1" / "model.onnx", version_dir / "model.onnx")
    (tmp_path / "mlp" / "config.toml").write_text(
        "[[instances]]\ncount = 2\nthreads = 1\n"
        "[[instances]]\ncount = 1\nthreads = 2\nlow_load_only = true\n"
    )
    config = load_model_config(tmp_path / "mlp")
    loaded = load_version("mlp", 1, version_dir, config=config,
                          defaults=ServingDefaults(tuning=settings))  # fmt: skip
    assert [(i.label, i.threads, i.low_load_only) for i in loaded.instances] == [
        ("cpu/0", 1, False),
        ("cpu/1", 1, False),
        ("cpu/2", 2, True),
    ]
    assert loaded.batcher._workers.low_load_only == {"cpu/2"}
    assert _layout(loaded) == "2x1 + low-load 1x2"  # batchserve_tuning_info's layout
