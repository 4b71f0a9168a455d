"""Tuning for lone requests (app.tuning.low_load): the rules on given timings (when a
low-load-only instance joins the tuned layout, when sessions spin), the answers given without
timing anything, and how the choice reaches the config, the metadata and the cache. Nothing
here times this machine: the timings themselves are measured in the tuning benches."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from app.repository.autotune import apply_tuning
from app.repository.config import ModelConfig
from app.tuning import measure
from app.tuning.low_load import (
    LowLoad,
    low_load_choice,
    low_load_instance,
    spinning_helps,
    spins_faster,
    spins_slower,
)
from app.tuning.points import Layout, Point
from app.tuning.result import Tuning, from_dict
from app.tuning.timing import Stability

SETTINGS = measure.ProfileSettings(
    device="cpu", layouts=(), batch_sizes=(), window_s=0.05,
    stability=Stability(max_seconds=0.3), passes=1,
)  # fmt: skip


def zeros(width: int, name: str) -> measure.FeedsFor:
    def feeds(size: int) -> dict[str, np.ndarray]:
        return {name: np.zeros((size, width), np.float32)}

    return feeds


def profiled(layout: Layout) -> list[Point]:
    """What the profile holds for the chosen layout: its lone request was measured."""
    return [Point(layout, 1, 1.0, 1.0, 1000.0)]


@pytest.mark.parametrize(
    ("reference_ms", "off_ms", "on_ms", "expected"),
    [
        # A compute-bound model: every core's session takes 0.55 of one core's time.
        (40.0, 22.0, 21.5, LowLoad(threads=2, spinning=True)),
        # ... where spinning made it slower, the instance sleeps.
        (40.0, 22.0, 26.0, LowLoad(threads=2, spinning=False)),
        # Saves only 10%: not worth breaking up batches for.
        (10.0, 9.0, 9.0, None),
        # 40% of a tiny request is under LOW_LOAD_MIN_GAIN_MS.
        (1.0, 0.6, 0.6, None),
        # Slower on every core (threads contending): none.
        (5.0, 6.0, 6.5, None),
    ],
)
def test_a_low_load_instance_joins_where_every_core_saves_enough(
    reference_ms: float, off_ms: float, on_ms: float, expected: LowLoad | None
) -> None:
    chosen = low_load_choice(Layout(1, 2), reference_ms=reference_ms, off_ms=off_ms, on_ms=on_ms)
    assert chosen == expected


def test_a_single_instance_or_an_unmeasured_layout_gets_none_untimed() -> None:
    # One instance already runs a lone request on all its threads; an empty profile (its
    # budget spent before the layout) has nothing to time. (A tiny model, timed, gains under
    # LOW_LOAD_MIN_GAIN_MS: the (1.0, 0.6, 0.6) case above.)
    digits = zeros(64, "input")
    missing = Path("not-a-model.onnx")  # opening it would fail: nothing is opened
    assert low_load_instance(missing, Layout(1, 2), profiled(Layout(1, 2)), digits,
                             SETTINGS) is None  # fmt: skip
    assert low_load_instance(missing, Layout(2, 1), [], digits, SETTINGS) is None


def test_a_tuned_low_load_instance_reaches_the_config_metadata_and_cache() -> None:
    tuned = Tuning("tuned", count=2, threads=1, max_batch_size=32, batch_size=4,
                   low_load_threads=2, low_load_spinning=True)  # fmt: skip
    instances = apply_tuning(tuned, ModelConfig()).instances
    assert [(i.count, i.threads, i.spinning, i.low_load_only) for i in instances] == [
        (2, 1, False, False),
        (1, 2, True, True),
    ]
    assert tuned.layout == "2x1 + low-load 1x2"  # as batchserve_tuning_info names it
    assert "2x1 + low-load 1x2 spinning" in tuned.describe()
    meta = tuned.metadata()
    assert (meta["low_load_threads"], meta["low_load_spinning"]) == (2, True)
    assert from_dict(asdict(tuned)) == tuned
    # Without one: a single [[instances]] line, and the plain layout.
    plain = Tuning("tuned", count=2, threads=1, max_batch_size=32, batch_size=4)
    assert len(apply_tuning(plain, ModelConfig()).instances) == 1
    assert plain.layout == "2x1"


def test_a_cached_low_load_instance_of_no_threads_is_not_trusted() -> None:
    entry = asdict(Tuning("tuned", count=2, threads=1, max_batch_size=32, batch_size=4,
                          low_load_threads=0))  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        from_dict(entry)


def test_spinning_must_save_a_share_and_half_a_millisecond() -> None:
    assert spins_faster(12.0, 10.5)  # the text model: 12% and 1.5 ms
    assert not spins_faster(12.0, 11.6)  # 0.4 ms: under 5%
    assert not spins_faster(0.05, 0.02)  # 60%, but 30 microseconds (digits: never spins)
    assert not spins_faster(4.0, 3.6)  # 10%, but 0.4 ms


def test_a_low_load_instance_sleeps_only_where_spinning_is_slower() -> None:
    """Its spinning is ONNX Runtime's default, kept unless measured 5% slower: the text
    model's lone request, served, was 0.5 ms quicker spinning (15 of 16 rounds) where the
    rotation timed the two within 3% of each other."""
    assert not spins_slower(46.7, 46.2)  # spinning quicker, by less than the main rule asks
    assert not spins_slower(46.2, 47.0)  # spinning 2% slower: noise, it stays on
    assert spins_slower(40.0, 42.0)  # 5% slower: it sleeps


def test_spinning_is_not_timed_where_it_cannot_apply() -> None:
    """One thread a session has nothing to spin; a layout the profile never measured has
    no batch to time: both are answered without opening a session."""
    digits = zeros(64, "input")
    missing = Path("not-a-model.onnx")  # opening it would fail: nothing is opened
    assert not spinning_helps(missing, Layout(2, 1), profiled(Layout(2, 1)), 1, digits, SETTINGS)
    assert not spinning_helps(missing, Layout(1, 2), [], 1, digits, SETTINGS)
