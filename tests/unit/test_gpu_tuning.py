"""Tuning at load on a GPU, as far as a CPU shows it: where it measures (the CPU unless a
GPU is visible and ONNX Runtime has CUDA), the layouts it compares, the rule that turns
a GPU's profile into max_batch_size and the batch it forms, and how the result reaches
the config, the metadata and the cache. tests/gpu/test_cuda.py tunes a bare model on a
real GPU."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from app.profile.recommend import Layout, Point, recommend
from app.repository.autotune import chosen_tuning
from app.repository.config import ModelConfig
from app.repository.gpu_tuning import gpu_layouts, tuning_device
from app.repository.tuning_result import Tuning, from_dict


def test_hidden_gpus_leave_tuning_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA_VISIBLE_DEVICES="" hides every GPU (as CUDA reads it): the CPU is tuned, on any
    machine; here, without the NVIDIA driver, it is the CPU either way."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert tuning_device() == "cpu"


def test_one_or_two_sessions_per_gpu_share_the_cores() -> None:
    assert gpu_layouts(16) == (Layout(1, 16), Layout(2, 8))
    assert gpu_layouts(1) == (Layout(1, 1), Layout(2, 1))


def gpu_points() -> list[Point]:
    """A GPU's profile of a model served well below the HTTP path's ceiling: a batch costs
    the launch plus a little a sample until 64, more past it; two sessions per GPU overlap
    copies with compute, 10% more throughput."""
    points = []
    for count, gain in ((1, 1.0), (2, 1.1)):
        for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            latency_ms = 5.0 + 0.2 * batch + (0.5 * (batch - 64) if batch > 64 else 0.0)
            throughput = gain * batch / latency_ms * 1000
            points.append(Point(Layout(count, 8), batch, latency_ms, latency_ms, throughput))
    return points


def test_a_gpu_batches_up_to_the_largest_batch_within_half_the_target() -> None:
    points = gpu_points()
    chosen = recommend(points, None, True)
    # The default target is 10 x batch 1's 5.2 ms; half of it, 26 ms, holds batch 64 (17.8
    # ms) and not 128 (62.6 ms).
    assert (chosen.layout, chosen.max_batch_size) == (Layout(2, 8), 64)
    tuned = chosen_tuning(chosen, points, ModelConfig(), batching=True, inputs="synthetic inputs",
                          device="cuda")  # fmt: skip
    assert (tuned.device, tuned.count, tuned.threads) == ("cuda", 2, 8)
    assert tuned.max_batch_size == 64 and tuned.batch_size == 64
    # A config's max_batch_size stays; a fixed batch axis is left as it is.
    bounded = chosen_tuning(chosen, points, ModelConfig(max_batch_size=16), batching=True,
                            inputs="", device="cuda")  # fmt: skip
    assert bounded.max_batch_size == 16 and bounded.batch_size == 16
    fixed = chosen_tuning(chosen, points, ModelConfig(), batching=False, inputs="",
                          device="cuda")  # fmt: skip
    assert (fixed.max_batch_size, fixed.batch_size) == (None, None)


def test_a_gpu_tuning_serves_on_every_gpu_and_is_cached_as_such() -> None:
    tuned = Tuning("tuned", count=2, threads=8, max_batch_size=64, batch_size=64, device="cuda")
    config = tuned.apply(ModelConfig())
    assert [(i.device, i.count, i.threads) for i in config.instances] == [("cuda:*", 2, 8)]
    assert config.max_batch_size == 64
    assert tuned.layout == "2x8 per GPU" and tuned.metadata()["device"] == "cuda"
    assert from_dict(asdict(tuned)) == tuned
    with pytest.raises(ValueError, match="neither 'cpu' nor 'cuda'"):
        from_dict({**asdict(tuned), "device": "tpu"})


def test_a_gpu_without_a_cuda_session_tunes_the_cpu(tmp_path: Path) -> None:
    """Tuning asked to measure cuda:0 where no session gets CUDA (here: onnxruntime-gpu
    without the driver) measures the CPU instead, rather than failing the tuning."""
    from app.repository.autotune import TuneSettings, _measure
    from app.repository.tuning_inputs import tuning_inputs
    from app.runtime import OnnxInstance
    from app.runtime.session import ProviderUnavailableError
    from testing.synthetic_models import write_heavy_model

    model = tmp_path / "mlp" / "1" / "model.onnx"
    write_heavy_model(model, width=16, hidden=64, blocks=1)
    try:
        OnnxInstance(model, "cuda:0", threads=1, index=0)
    except ProviderUnavailableError:
        pass
    else:
        pytest.skip("CUDA runs here: tests/gpu/test_cuda.py tunes on the GPU")
    settings = TuneSettings(budget_s=1.0, window_s=0.02, point_s=0.1)
    inputs = tuning_inputs(ModelConfig(), model.parent.parent)
    tuned = _measure(model, ModelConfig(), settings=settings, inputs=inputs, device="cuda:0")
    assert (tuned.source, tuned.device) == ("tuned", "cpu")
    assert tuned.apply(ModelConfig()).instances[0].device == "cpu"
