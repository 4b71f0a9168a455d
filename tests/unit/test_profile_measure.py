"""Measuring for `batchserve profile` (and `optimize evaluate`): windows until stable,
instances timed at once from threads, a layout's sweep stopping past the target, on real
ONNX Runtime sessions of a model built here."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.tuning import measure
from app.tuning.measure import ProfileSettings, open_instances, profile, synthetic_feeds
from app.tuning.points import Layout, Point
from app.tuning.timing import Stability, Window, time_concurrent, until_stable
from testing.synthetic_models import write_heavy_model
from tests.optimize_models import write_mlp


def windows(*throughputs: float) -> list[Window]:
    return [Window(samples=int(t), seconds=1.0, latencies_s=(1.0,)) for t in throughputs]


def test_windows_repeat_until_the_last_three_agree_within_five_percent() -> None:
    queue = windows(100, 200, 100, 101, 103, 500)
    got, stable = until_stable(lambda: queue.pop(0), Stability())
    assert stable and [w.samples for w in got] == [100, 200, 100, 101, 103]


def test_windows_stop_at_the_bound_and_say_they_did_not_settle() -> None:
    queue = windows(*([100, 200] * 10))
    got, stable = until_stable(lambda: queue.pop(0), Stability(max_windows=6))
    assert not stable and len(got) == 6


def test_instances_run_at_once_and_their_samples_add_up(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    instances = open_instances(path, "cpu", Layout(2, 1))
    assert [i.label for i in instances] == ["cpu/0", "cpu/1"] and instances[0].threads == 1
    feeds = synthetic_feeds(instances[0].inputs, 4, 1)
    with ThreadPoolExecutor(2) as pool:
        window = time_concurrent([i.run for i in instances], feeds, 4, 0.02, pool)
    assert window.samples == 4 * window.runs and window.runs >= 2
    # Wall time, not the sum of both instances' busy time: they ran side by side.
    assert window.seconds < sum(window.latencies_s)


def test_a_layout_stops_growing_after_the_first_batch_past_the_target(tmp_path: Path) -> None:
    path = tmp_path / "heavy.onnx"
    write_heavy_model(path, hidden=256, blocks=2)
    specs = open_instances(path, "cpu", Layout(1, 1))[0].inputs
    settings = ProfileSettings(
        device="cpu",
        layouts=(Layout(1, 1),),
        batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        stop_above_ms=0.05,  # batch 1 takes about 0.02 ms; 1024 rows never fit
        window_s=0.002,
        stability=Stability(max_seconds=0.05),
        passes=1,
    )
    seen = []
    result = profile(path, settings, lambda n: synthetic_feeds(specs, n, 1), seen.append)
    assert seen == result.points and result.providers == ["CPUExecutionProvider"]
    sizes = [p.batch_size for p in result.points]
    assert sizes == list(settings.batch_sizes[: len(sizes)]) and len(sizes) < 12
    assert result.points[-1].latency_ms_p50 > 0.05
    assert all(p.latency_ms_p50 <= 0.05 for p in result.points[:-1])


def two_passes(path: Path) -> tuple[list[tuple[str, int]], list[Point], list[Point]]:
    """Two layouts x three batch sizes profiled in two passes: the order the points were
    measured in, every measurement, and the profile's points."""
    specs = open_instances(path, "cpu", Layout(1, 1))[0].inputs
    settings = ProfileSettings(
        device="cpu",
        layouts=(Layout(1, 1), Layout(2, 1)),
        batch_sizes=(1, 2, 4),
        window_s=0.002,
        stability=Stability(max_seconds=0.05),
    )
    seen: list[Point] = []
    passes: list[int] = []
    result = profile(
        path, settings, lambda n: synthetic_feeds(specs, n, 1), seen.append, passes.append
    )
    assert settings.passes == 2 and passes == [1, 2] and len(seen) == 12
    order = [(p.layout.label, p.batch_size) for p in seen]
    assert order[6:] == list(reversed(order[:6]))
    return order, seen, result.points


def test_layouts_take_turns_at_each_batch_size_and_the_faster_pass_counts(
    tmp_path: Path,
) -> None:
    order, seen, points = two_passes(write_mlp(tmp_path / "mlp.onnx"))
    # Each size in turn, the turn order reversed every size: a busy spell slows both alike.
    assert order[:6] == [("1x1", 1), ("2x1", 1), ("2x1", 2), ("1x1", 2), ("1x1", 4), ("2x1", 4)]
    assert [(p.layout.label, p.batch_size) for p in points] == sorted(order[:6])
    for point in points:
        both = [q for q in seen if (q.layout, q.batch_size) == (point.layout, point.batch_size)]
        assert point == max(both, key=lambda q: q.throughput_sps)


def test_layouts_too_large_to_hold_at_once_are_measured_one_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_mlp(tmp_path / "mlp.onnx")
    layouts = (Layout(1, 1), Layout(2, 1))
    assert measure.interleaves(path, layouts) and not measure.interleaves(path, layouts[:1])
    # Three sessions of this file, one byte short of fitting.
    monkeypatch.setattr(measure, "INTERLEAVE_MAX_BYTES", 3 * path.stat().st_size - 1)
    assert not measure.interleaves(path, layouts)
    order, _, _ = two_passes(path)
    assert order[:6] == [(x, n) for x in ("1x1", "2x1") for n in (1, 2, 4)]


def test_a_second_pass_cut_short_by_its_budget_keeps_the_first_pass_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a budget the second pass may stop before it has measured every point (a busy
    machine slows each window): those points keep their first measurement, and the ones it
    did measure keep the faster of the two."""
    one, two = Layout(1, 1), Layout(2, 1)

    def point(layout: Layout, size: int, throughput: float) -> Point:
        return Point(layout, size, 1.0, 1.0, throughput)

    passes = iter(
        [
            measure.Profile([point(one, 1, 100.0), point(two, 1, 150.0)], ["CPU"]),
            measure.Profile([point(two, 1, 180.0)], ["CPU"]),  # then the budget ran out
        ]
    )
    monkeypatch.setattr(measure, "_measure_pass", lambda *args: next(passes))
    settings = ProfileSettings(device="cpu", layouts=(one, two), batch_sizes=(1,), passes=2)
    result = profile(Path("unused.onnx"), settings, lambda size: {})
    assert [(p.layout, p.throughput_sps) for p in result.points] == [(one, 100.0), (two, 180.0)]
