"""The recommendation rule of `batchserve profile` on synthetic timing tables, and the pieces
that decide what is measured (layouts, batch sizes, inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from app.profile.measure import batch_sizes, default_layouts, synthetic_feeds
from app.profile.recommend import Layout, Point, default_target_ms, recommend
from app.tensors import TensorSpec

ONE_BY_TWO, TWO_BY_ONE = Layout(1, 2), Layout(2, 1)


def table(layout: Layout, rows: dict[int, tuple[float, float]]) -> list[Point]:
    """Points from {batch: (latency ms, samples/s)}."""
    return [
        Point(layout, size, latency, latency * 1.1, throughput)
        for size, (latency, throughput) in rows.items()
    ]


#: A compute-bound model: 1x2 halves latency, 2x1 has a little more throughput.
COMPUTE_BOUND = table(
    ONE_BY_TWO, {1: (2.0, 500), 2: (3.0, 667), 4: (5.0, 800), 8: (9.0, 889), 16: (17.0, 941)}
) + table(
    TWO_BY_ONE, {1: (4.0, 500), 2: (6.0, 667), 4: (9.5, 842), 8: (17.0, 941), 16: (33.0, 970)}
)


def test_largest_batch_within_half_the_target_in_the_best_layout() -> None:
    rec = recommend(COMPUTE_BOUND, target_ms=20.0)  # batches may take 10 ms
    # 1x2 reaches batch 8 (9 ms, 889/s) within 10 ms; 2x1 only batch 4 (9.5 ms, 842/s).
    assert rec.layout == ONE_BY_TWO and rec.max_batch_size == 8
    assert rec.preferred_batch_sizes == [8]  # 4 is 10% below the best: not preferred
    assert rec.throughput_sps == 889 and rec.latency_ms_p50 == 9.0
    assert rec.meets_target and rec.target_source == "given" and not rec.notes


def test_a_looser_target_lets_the_higher_throughput_layout_win() -> None:
    rec = recommend(COMPUTE_BOUND, target_ms=40.0)  # batches may take 20 ms
    # 1x2 best within 20 ms: batch 16, 941/s; 2x1: batch 8, 941/s -> tie, fewer instances.
    assert rec.layout == ONE_BY_TWO and rec.max_batch_size == 16
    rec = recommend(COMPUTE_BOUND, target_ms=70.0)  # 2x1 batch 16 (33 ms, 970/s) now fits
    assert rec.layout == TWO_BY_ONE and rec.max_batch_size == 16
    assert rec.preferred_batch_sizes == [8, 16]  # 941 is within 3% of 970


def test_preferred_sizes_are_those_within_three_percent_of_the_best() -> None:
    flat = table(ONE_BY_TWO, {8: (1.0, 1000), 16: (2.0, 990), 32: (4.0, 1000), 64: (8.5, 960)})
    rec = recommend(flat, target_ms=20.0)
    assert rec.max_batch_size == 64  # the largest within the bound, even if not the fastest
    assert rec.preferred_batch_sizes == [8, 16, 32]  # 960 is 4% below 1000


def test_the_default_target_is_ten_times_batch_one_latency_with_a_floor() -> None:
    assert default_target_ms(COMPUTE_BOUND) == 20.0  # 10 x the best batch-1 latency, 2 ms
    rec = recommend(COMPUTE_BOUND)
    assert rec.target_ms == 20.0 and rec.target_source.startswith("default")
    assert rec.max_batch_size == 8
    tiny = table(TWO_BY_ONE, {1: (0.02, 50_000), 64: (0.1, 640_000), 128: (0.3, 430_000)})
    assert default_target_ms(tiny) == 5.0  # 0.2 ms would be below what HTTP costs
    rec = recommend(tiny)
    assert (rec.max_batch_size, rec.preferred_batch_sizes) == (128, [64])


def test_throughput_past_what_http_carries_ties_and_fewer_instances_win() -> None:
    # digits as measured: 2x1 computes twice what 1x2 does, both far past the HTTP ceiling,
    # and 1x2 served 10% more requests.
    digits = table(ONE_BY_TWO, {1: (0.025, 42_000), 64: (0.14, 450_000), 128: (0.23, 540_000)})
    digits += table(TWO_BY_ONE, {1: (0.016, 85_000), 64: (0.13, 970_000), 128: (0.25, 1e6)})
    rec = recommend(digits)
    assert rec.layout == ONE_BY_TWO and rec.max_batch_size == 128
    assert rec.preferred_batch_sizes == [128]  # from the real throughputs, not the capped
    assert rec.throughput_sps == 540_000
    assert recommend(digits, ceiling_sps=float("inf")).layout == TWO_BY_ONE


def test_a_target_no_layout_can_meet_is_flagged_with_the_lowest_latency_choice() -> None:
    rec = recommend(COMPUTE_BOUND, target_ms=3.0)  # batch 1 takes 2 ms > 1.5 ms
    assert not rec.meets_target
    assert (rec.layout, rec.max_batch_size, rec.preferred_batch_sizes) == (ONE_BY_TWO, 1, [])
    assert "cannot be met" in rec.notes[0] and "1.5 ms" in rec.notes[0]


def test_a_model_that_does_not_batch_gets_a_layout_only() -> None:
    fixed = table(ONE_BY_TWO, {4: (2.0, 2000)}) + table(TWO_BY_ONE, {4: (3.0, 2600)})
    rec = recommend(fixed, target_ms=10.0, batching=False)
    assert rec.layout == TWO_BY_ONE and rec.max_batch_size is None
    assert rec.preferred_batch_sizes == []


def test_unsettled_timings_are_noted_where_the_recommendation_rests_on_them() -> None:
    points = [
        Point(ONE_BY_TWO, 1, 1.0, 1.0, 1000, windows=15, stable=False),
        Point(ONE_BY_TWO, 2, 1.2, 1.3, 1600, windows=15, stable=True),
    ]
    assert recommend(points, target_ms=10.0).notes == []  # batch 2 is chosen, and settled
    note = recommend(points, target_ms=2.2).notes[0]  # now batch 1 is
    assert "1x2 batch 1 did not settle" in note


def test_layouts_parse_and_default_to_every_split_of_the_cores() -> None:
    assert Layout.parse("2x1") == TWO_BY_ONE and Layout.parse("1X2").label == "1x2"
    for bad in ("2", "0x2", "ax1", "1x2x3"):
        with pytest.raises(ValueError):
            Layout.parse(bad)
    assert default_layouts("cpu", 2) == (ONE_BY_TWO, TWO_BY_ONE)
    assert [x.label for x in default_layouts("cpu", 16)] == ["1x16", "2x8", "4x4", "8x2", "16x1"]
    assert [x.label for x in default_layouts("cpu", 6)] == ["1x6", "2x3", "6x1"]
    assert default_layouts("cpu", 1) == (Layout(1, 1),)
    assert default_layouts("cuda:0", 16) == (Layout(1, 16),)


def test_batch_sizes_are_powers_of_two_and_the_configs_sizes() -> None:
    assert batch_sizes(128) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert batch_sizes(100, [48, 200, 0]) == (1, 2, 4, 8, 16, 32, 48, 64)


def test_synthetic_inputs_take_the_batch_and_sequence_length() -> None:
    specs = [
        TensorSpec("input_ids", "INT64", (-1, -1), ("batch", "sequence")),
        TensorSpec("pixels", "FP32", (-1, 3, -1), ("batch", None, "width")),
        TensorSpec("text", "BYTES", (-1,), ("batch",)),
    ]
    feeds = synthetic_feeds(specs, 4, 16)
    assert feeds["input_ids"].shape == (4, 16) and np.all(feeds["input_ids"] == 1)
    assert feeds["pixels"].shape == (4, 3, 16) and feeds["pixels"].dtype == np.float32
    assert feeds["pixels"].min() >= 0 and feeds["pixels"].max() < 1
    assert feeds["text"].shape == (4,) and feeds["text"].dtype == object
    fixed = synthetic_feeds([TensorSpec("x", "FP32", (8, 2), (None, None))], None, 16)
    assert fixed["x"].shape == (8, 2)
