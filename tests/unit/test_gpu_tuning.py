"""Tuning at load on a GPU, as far as a CPU shows it: where it measures (the CPU unless a
GPU is visible and ONNX Runtime has CUDA), the layouts it compares, the rule that turns
a GPU's profile into max_batch_size and the batch it forms, and how the result reaches
the config, the metadata and the cache. tests/gpu/test_cuda.py tunes a bare model on a
real GPU."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from app.repository.autotune import apply_tuning
from app.repository.config import ModelConfig
from app.tuning.gpu import gpu_layouts, tuning_device
from app.tuning.plan import plan
from app.tuning.points import Layout, Point
from app.tuning.result import Tuning, from_dict, from_plan


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
    chosen = plan(points, device="cuda:0")
    # The default target is 10 x batch 1's 5.2 ms; half of it, 26 ms, holds batch 64 (17.8
    # ms) and not 128 (62.6 ms).
    assert (chosen.layout, chosen.max_batch_size, chosen.batch_size) == (Layout(2, 8), 64, 64)
    tuned = from_plan(chosen, inputs="synthetic inputs", device="cuda")
    assert (tuned.device, tuned.count, tuned.threads) == ("cuda", 2, 8)
    assert tuned.max_batch_size == 64 and tuned.batch_size == 64
    # A config's max_batch_size stays; a fixed batch axis is left as it is.
    bounded = plan(points, device="cuda:0", max_batch_size=16)
    assert bounded.max_batch_size == 16 and bounded.batch_size == 16
    fixed = plan(points, device="cuda:0", batching=False)
    assert (fixed.max_batch_size, fixed.batch_size) == (None, None)


def test_a_gpu_tuning_serves_on_every_gpu_and_is_cached_as_such() -> None:
    tuned = Tuning("tuned", count=2, threads=8, max_batch_size=64, batch_size=64, device="cuda")
    config = apply_tuning(tuned, ModelConfig())
    assert [(i.device, i.count, i.threads) for i in config.instances] == [("cuda:*", 2, 8)]
    assert config.max_batch_size == 64
    assert tuned.layout == "2x8 per GPU" and tuned.metadata()["device"] == "cuda"
    assert from_dict(asdict(tuned)) == tuned
    with pytest.raises(ValueError, match="neither 'cpu' nor 'cuda'"):
        from_dict({**asdict(tuned), "device": "tpu"})


def test_a_gpu_without_a_cuda_session_tunes_the_cpu(tmp_path: Path) -> None:
    """Tuning asked to measure cuda:0 where no session gets CUDA (here: onnxruntime-gpu
    without the driver) measures the CPU instead, rather than failing the tuning."""
    from app.repository.samples import tuning_samples
    from app.runtime import OnnxInstance
    from app.runtime.session import ProviderUnavailableError
    from app.tuning.at_load import ModelLimits, TuneSettings, _measure
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
    samples = tuning_samples(ModelConfig(), model.parent.parent)
    tuned = _measure(model, ModelLimits(), settings=settings, samples=samples, device="cuda:0")
    assert (tuned.source, tuned.device) == ("tuned", "cpu")
    assert apply_tuning(tuned, ModelConfig()).instances[0].device == "cpu"
