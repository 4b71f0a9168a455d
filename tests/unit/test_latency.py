"""Latency-target batching: the online batch-time model converges on synthetic timings, the
plan waits only when waiting pays and the target allows it, and the batcher sheds load early
once the queue holds more work than the target allows, at a threshold steered so that about
the allowed share of answered requests miss the target."""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from app.batching import Batcher, BatchingPolicy, BatchObserver
from app.batching.latency import (
    MISS_SHARE,
    ArrivalRate,
    LatencyModel,
    ShedThreshold,
    expected_latency,
    plan_batch,
)
from app.errors import OverloadedError

WAIT_S = 10.0


def test_the_model_converges_on_noisy_timings() -> None:
    rng = random.Random(0)
    model = LatencyModel()
    for _ in range(300):
        n = rng.choice([1, 2, 4, 8, 16, 32])
        model.observe(n, (0.004 + 0.0005 * n) * rng.uniform(0.95, 1.05))
    assert model.fitted
    assert model.fixed_s == pytest.approx(0.004, rel=0.15)
    assert model.per_sample_s == pytest.approx(0.0005, rel=0.15)
    assert model.predict(10) == pytest.approx(0.009, rel=0.05)


def test_the_model_knows_how_far_its_predictions_miss() -> None:
    """Batches of 20 ms a sample that vary by +-10% (uniform: a mean absolute error of 5%),
    later by +-30% (15%), then one stalls 10x: the error follows, one stall moves it little,
    and the pessimistic time lies above most batches."""
    rng = random.Random(1)
    model = LatencyModel()
    for spread in (0.1, 0.3):
        times = []
        for _ in range(400):
            n = rng.choice([1, 2])
            times.append((n, 0.02 * n * rng.uniform(1 - spread, 1 + spread)))
            model.observe(*times[-1])
        assert model.error_share == pytest.approx(spread / 2, rel=0.4)
        recent = times[-100:]
        over = sum(1 for n, t in recent if t > model.pessimistic(n)) / len(recent)
        assert over < 0.1
    before = model.error_share
    model.observe(1, 0.2)  # a stalled batch counts as a 100% error, not 900%
    assert model.error_share < before + 0.06


def test_the_model_follows_a_device_that_slows_down() -> None:
    model = LatencyModel()
    for n in [1, 8] * 50:
        model.observe(n, 0.001 * n)
    for n in [1, 8] * 50:
        model.observe(n, 0.003 * n)  # e.g. another tenant took half the cores
    assert model.per_sample_s == pytest.approx(0.003, rel=0.05)


def test_one_batch_size_alone_is_not_a_fit() -> None:
    model = LatencyModel()
    for _ in range(10):
        model.observe(4, 0.004)
    assert not model.fitted
    assert model.predict(4) == pytest.approx(0.004)


def fitted(fixed_s: float, per_sample_s: float) -> LatencyModel:
    model = LatencyModel()
    for n in (1, 32) * 5:
        model.observe(n, fixed_s + per_sample_s * n)
    return model


def test_the_cap_keeps_a_batch_within_half_the_target() -> None:
    model = fitted(0.002, 0.001)  # t(n) = 2 ms + 1 ms * n
    plan = plan_batch(model, 0.050, 64, queued=100, oldest_arrived=0.0, rate=1000, now=0.0)
    assert plan == plan_batch(model, 0.050, 64, 100, 0.0, 1000, 0.0)
    assert plan.take == 23 and plan.hold_until is None  # 2 + 23 = 25 ms = half of 50


def test_a_large_fixed_cost_is_worth_waiting_for_while_the_target_allows() -> None:
    model = fitted(0.010, 0.0001)  # a GPU-like batch: 10 ms fixed, 0.1 ms a sample
    plan = plan_batch(model, 0.200, 256, queued=4, oldest_arrived=0.0, rate=2000, now=0.001)
    assert plan.hold_until is not None and plan.hold_until > 0.001
    # ... but not past the point where the oldest request would miss the target.
    late = plan_batch(model, 0.200, 256, queued=4, oldest_arrived=-0.195, rate=2000, now=0.0)
    assert late.hold_until is None


def test_a_cpu_like_batch_is_taken_at_once() -> None:
    model = fitted(0.0001, 0.002)  # fixed cost negligible: waiting buys nothing
    plan = plan_batch(model, 0.100, 64, queued=1, oldest_arrived=0.0, rate=500, now=0.0)
    assert plan.hold_until is None


def test_a_batch_grows_only_as_far_as_the_arrival_rate_needs() -> None:
    model = fitted(0.004, 0.001)  # 4 ms fixed, 1 ms a sample: at most 1000 samples/s
    sizes = [  # 40 queued: no backlog to drain within the oldest's second
        plan_batch(model, 1.0, 256, queued=40, oldest_arrived=0.0, rate=rate, now=0.0).take
        for rate in (10, 200, 500, 800, 2000)
    ]
    # n / (4 ms + 1 ms * n) >= 1.1 x rate: 1, 2, 5, 3.52/0.12 -> 30; past capacity, the cap
    # (t(n) <= 500 ms: 496).
    assert sizes == [1, 2, 5, 30, 256]
    # Two workers share the arrivals: each needs half.
    shared = plan_batch(model, 1.0, 256, 40, 0.0, 800, 0.0, workers=2)
    assert shared.take == 4  # 1.76 / 0.56


def test_a_backlog_is_drained_before_the_oldest_deadline_without_running_past_it() -> None:
    model = fitted(0.004, 0.001)
    # 240 queued, a trickle arriving, the oldest with 0.5 s left: 480/s drains it in time.
    drain = plan_batch(model, 1.0, 256, queued=240, oldest_arrived=-0.5, rate=10, now=0.0)
    assert drain.take == 4  # 480 x 4 ms / (1 - 480 x 1 ms) = 3.7
    # 20 ms left: no batch drains it in time, but one that ends past the deadline would make
    # the oldest miss where a batch of 16 (t = 20 ms) does not.
    urgent = plan_batch(model, 1.0, 256, queued=300, oldest_arrived=-0.98, rate=10, now=0.0)
    assert urgent.take == 16
    # The oldest misses whatever the size: drain with batches as big as still pays (fixed
    # cost a tenth of t(n): n = 36), not as big as the target allows.
    lost = plan_batch(model, 1.0, 256, queued=300, oldest_arrived=-0.997, rate=10, now=0.0)
    assert lost.take == model.worth_waiting_for(256)
    assert 36 <= lost.take <= 37
    # No fixed cost (a CPU-bound model): a bigger batch drains no faster, so it stays 1.
    linear = fitted(0.0, 0.0175)
    assert plan_batch(linear, 0.25, 16, queued=12, oldest_arrived=-0.1, rate=40, now=0.0).take == 1


def test_no_arrivals_means_no_waiting() -> None:
    model = fitted(0.010, 0.0001)
    plan = plan_batch(model, 0.200, 256, queued=4, oldest_arrived=0.0, rate=0.0, now=0.0)
    assert plan.hold_until is None


def test_the_arrival_rate_decays() -> None:
    rate = ArrivalRate(tau_s=1.0)
    for i in range(1000):
        rate.add(1, i / 100)  # 100 a second for 10 s
    assert rate.at(10.0) == pytest.approx(100, rel=0.05)
    assert rate.at(13.0) < 100 * np.exp(-2.9)


def test_expected_latency_counts_the_queue_ahead() -> None:
    model = fitted(0.0, 0.001)  # 1000 samples/s
    assert expected_latency([model], 1.0, 64, queued=0, incoming=1) == pytest.approx(0.001)
    assert expected_latency([model], 1.0, 64, queued=500, incoming=1) == pytest.approx(0.5 + 0.064)
    assert expected_latency([LatencyModel()], 1.0, 64, queued=500, incoming=1) is None


def admit_and_answer(
    threshold: ShedThreshold, rng: random.Random, requests: int, spread: float
) -> tuple[int, int]:
    """Requests expected to take 0..2x the target, each really taking its expectation times
    lognormal noise of `spread`: admitted below the threshold, their outcomes fed back.
    Returns (answered, missed). They come a target's length apart: independent misses."""
    target = 1.0
    answered = missed = 0
    for _ in range(requests):
        admit_and_answer.clock += target  # type: ignore[attr-defined]
        expected = rng.uniform(0.0, 2.0) * target
        if expected > threshold.share * target:
            continue  # shed
        latency = expected * rng.lognormvariate(0.0, spread)
        threshold.observe(latency, target, admit_and_answer.clock)  # type: ignore[attr-defined]
        answered += 1
        missed += latency > target
    return answered, missed


admit_and_answer.clock = 0.0  # type: ignore[attr-defined]


def test_the_shed_threshold_settles_where_the_allowed_share_of_answers_miss() -> None:
    rng = random.Random(7)
    threshold = ShedThreshold()
    admit_and_answer(threshold, rng, 20_000, spread=0.2)  # settle
    answered, missed = admit_and_answer(threshold, rng, 100_000, spread=0.2)
    assert MISS_SHARE / 2 < missed / answered < MISS_SHARE * 2
    # With 20% noise the tail lies well above the mean: the threshold sits below 1.
    assert 0.5 < threshold.share < 0.9


def test_the_shed_threshold_follows_noisier_batches_down_and_calmer_ones_up() -> None:
    rng = random.Random(8)
    threshold = ShedThreshold()
    admit_and_answer(threshold, rng, 30_000, spread=0.05)
    calm = threshold.share
    admit_and_answer(threshold, rng, 30_000, spread=0.3)
    noisy = threshold.share
    admit_and_answer(threshold, rng, 60_000, spread=0.05)
    assert noisy < calm - 0.2 and abs(threshold.share - calm) < 0.1
    # Always within its bounds, however it is fed.
    threshold = ShedThreshold()
    for second in range(1000):
        threshold.observe(10.0, 1.0, float(second))
    assert threshold.share == pytest.approx(0.5)


def test_a_spell_of_misses_lowers_the_threshold_once() -> None:
    threshold = ShedThreshold()
    for i in range(50):  # 50 answers late within one target's length: one cause
        threshold.observe(0.3, 0.25, 10.0 + i * 0.004)
    assert threshold.share == pytest.approx(0.95)
    threshold.observe(0.3, 0.25, 10.5)  # a later miss counts again
    assert threshold.share == pytest.approx(0.90)


class Sleeper:
    """A worker whose batches take 1 ms + 2 ms a sample (really sleeping), gateable."""

    label, device = "cpu/0", "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.sizes: list[int] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.gate.wait(WAIT_S)
        n = inputs["x"].shape[0]
        self.sizes.append(n)
        threading.Event().wait(0.001 + 0.002 * n)  # the compute being modelled
        return {"y": inputs["x"]}


class Decisions(BatchObserver):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def decided(self, decision: str) -> None:
        self.seen.append(decision)

    def shed_threshold(self, expected_s: float) -> None:
        self.threshold_s = expected_s


ONE = {"x": np.zeros((1, 2), np.float32)}


async def fitted_batcher(
    target_s: float, sizes: tuple[int, ...], max_queue_size: int = 100
) -> tuple[Batcher, Sleeper, Decisions]:
    """A started latency-target batcher over a Sleeper, its model fitted on batches of
    `sizes` (two different sizes at least)."""
    runner, decisions = Sleeper(), Decisions()
    policy = BatchingPolicy(
        max_batch_size=8, max_queue_size=max_queue_size, latency_target_s=target_s
    )
    batcher = Batcher("m/1", policy, [runner], observer=decisions)
    batcher.start()
    for n in sizes:
        await batcher.infer({"x": np.zeros((n, 2), np.float32)})
    return batcher, runner, decisions


async def hold_worker(
    batcher: Batcher, runner: Sleeper, arrived: float | None = None
) -> asyncio.Future[dict[str, np.ndarray]]:
    """Send one request and hold the worker at its gate once it has taken it: what is sent
    next queues."""
    runner.gate.clear()
    held = batcher.submit(ONE, arrived=arrived)
    for _ in range(1000):  # until the worker has taken it and waits at the gate
        if not batcher.depth:
            break
        await asyncio.sleep(0)
    assert not batcher.depth
    return held


def test_the_batcher_sheds_what_the_target_cannot_take_and_serves_the_rest() -> None:
    async def scenario() -> None:
        batcher, runner, decisions = await fitted_batcher(0.05, (1, 4, 2, 8), 10_000)
        held = await hold_worker(batcher, runner)
        sent, shed = [], 0
        for _ in range(200):
            try:
                sent.append(batcher.submit(ONE))
            except OverloadedError as exc:
                assert "latency target (50 ms)" in str(exc)
                shed += 1
        # About 25 ms of work (t(8) = 17 ms for 8 samples) fits the 50 ms target.
        assert 8 <= len(sent) <= 40 and shed == 200 - len(sent)
        runner.gate.set()
        outcomes = await asyncio.gather(held, *sent, return_exceptions=True)
        await batcher.close()
        # An admitted request is answered, or refused when its turn comes too late to make
        # the target (the expectation it was admitted on is a mean); nothing else.
        late = [o for o in outcomes if isinstance(o, OverloadedError)]
        assert all(isinstance(o, dict) for o in outcomes if o not in late)
        assert len(late) < len(sent)
        assert decisions.seen.count("late") == len(late)
        assert decisions.seen.count("shed") == shed
        assert "now" in decisions.seen
        # The threshold in force is reported, within its bounds (0.5x..1.2x the target).
        assert 0.025 <= decisions.threshold_s <= 0.06

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S * 2))


def test_latency_counts_from_arrival_not_from_the_queue() -> None:
    """A request that spent its budget before it was queued (a slow body, tokenizing) is an
    answer that missed the target: the shed threshold learns from it."""

    async def scenario() -> None:
        batcher, runner, decisions = await fitted_batcher(0.5, (1, 4))
        before = decisions.threshold_s
        now = asyncio.get_running_loop().time()
        # 50 ms of its budget left, taken in time to make the target...
        answer = await hold_worker(batcher, runner, arrived=now - 0.45)
        await asyncio.sleep(0.1)  # ...but its compute runs late: it misses
        runner.gate.set()
        assert (await answer)["y"].shape == (1, 2)
        await batcher.infer(ONE)  # the next batch reports the threshold
        assert decisions.threshold_s < before - 0.02
        assert "late" not in decisions.seen
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S * 2))


def test_a_request_whose_turn_comes_too_late_is_refused_not_computed() -> None:
    """Computing a request that will miss anyway only makes those behind it late too: when the
    queue has made it too late to make the target in its batch, it is answered 429
    (saying how long it waited) and the next one is served. Kept all the same: one that was
    late before it was queued (a slow body, tokenizing: not the queue's doing)."""

    async def scenario() -> None:
        # t(1) = 3 ms, fitted on enough batches that the held one (its gate wait timed as
        # compute) moves the model little: fitted on two, it raised t(1) near the target.
        batcher, runner, decisions = await fitted_batcher(0.1, (1, 4) * 10)
        fitting = len(runner.sizes)
        held = await hold_worker(batcher, runner)
        stale = batcher.submit(ONE)
        await asyncio.sleep(0.12)  # it waits in the queue past the 100 ms target
        fresh = batcher.submit(ONE)
        runner.gate.set()
        assert (await held)["y"].shape == (1, 2)
        with pytest.raises(OverloadedError, match=r"\d{3,} ms of it in the queue"):
            await stale
        assert (await fresh)["y"].shape == (1, 2)
        assert decisions.seen.count("late") == 1
        assert sum(runner.sizes[fitting:]) == 2  # held and fresh: stale was never computed

        held = await hold_worker(batcher, runner)
        now = asyncio.get_running_loop().time()
        slow_body = batcher.submit(ONE, arrived=now - 1.0)  # late before it was queued
        runner.gate.set()
        for answer in (held, slow_body):
            assert (await answer)["y"].shape == (1, 2)
        assert decisions.seen.count("late") == 1
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S * 2))
