"""Variable-length batching (DESIGN.md): requests of different lengths share a batch, padded
to the longest with each input's pad value; outputs on that axis are cut back per request;
padding stays under the configured ceiling; results equal running each request alone.

Runs through a real ONNX Runtime session of a masked embedding model (load_tests'
write_token_model), held at a gate where a queue state must be reached first."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.batching import Batcher, BatchingPolicy, BatchObserver, BatchReport
from app.batching.padding import PaddedInput, PaddingPlan, choose_by_length
from app.errors import InvalidInputError, ModelLoadError
from app.repository.config import PaddingConfig
from app.repository.padding import build_padding_plan
from app.runtime import OnnxInstance
from testing.synthetic_models import write_token_model

WAIT_S = 10.0
PLAN = PaddingPlan(
    (PaddedInput("input_ids", 1, 0), PaddedInput("attention_mask", 1, 0)),
    {"hidden": 1},
    max_ratio=0.25,
)


@functools.cache
def model_path() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="token-model-")) / "model.onnx"
    write_token_model(path)
    return path


@functools.cache
def session() -> OnnxInstance:
    return OnnxInstance(model_path(), "cpu", threads=1, index=0)


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.reports: list[BatchReport] = []

    def batch_executed(self, report: BatchReport) -> None:
        self.reports.append(report)


class GatedSession:
    """The real session, whose thread can be held before it runs (to build a queue)."""

    label, device = "cpu/0", "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.shapes: list[tuple[int, ...]] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.shapes.append(inputs["input_ids"].shape)
        self.started.release()
        assert self.gate.wait(WAIT_S), "test never opened the gate"
        return session().run(inputs)


def tokens(length: int, samples: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, 1000, size=(samples, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def alone(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return session().run(inputs)


def policy(max_ratio: float = 0.25, max_batch_size: int = 32) -> BatchingPolicy:
    plan = PaddingPlan(PLAN.inputs, PLAN.outputs, max_ratio)
    return BatchingPolicy(max_batch_size=max_batch_size, max_queue_size=1000, padding=plan)


async def queued_behind_a_held_head(
    lengths: list[int], max_ratio: float = 0.25
) -> tuple[GatedSession, Recorder, list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Send a head request (held computing), then `lengths`; open the gate; return what each
    of the queued requests got and what it sent."""
    runner, recorder = GatedSession(), Recorder()
    batcher = Batcher("tokens/1", policy(max_ratio), [runner], observer=recorder)
    batcher.start()
    head = asyncio.ensure_future(batcher.infer(tokens(4, seed=99)))
    assert await asyncio.to_thread(runner.started.acquire, True, WAIT_S)
    sent = [tokens(n, seed=i) for i, n in enumerate(lengths)]
    futures = [asyncio.ensure_future(batcher.infer(x)) for x in sent]
    for _ in range(1000):
        if batcher.depth == len(lengths):
            break
        await asyncio.sleep(0)
    runner.gate.set()
    results = await asyncio.gather(*futures)
    await head
    await batcher.close()
    return runner, recorder, sent, results


def test_different_lengths_share_a_batch_and_get_exactly_their_own_outputs() -> None:
    runner, recorder, sent, results = asyncio.run(queued_behind_a_held_head([10, 12, 11, 12]))
    assert runner.shapes == [(1, 4), (4, 12)]  # one batch, padded to the longest
    for inputs, got in zip(sent, results, strict=True):
        expected = alone(inputs)
        assert got["hidden"].shape == expected["hidden"].shape  # cut back to its own length
        np.testing.assert_allclose(got["hidden"], expected["hidden"], atol=1e-6)
        np.testing.assert_allclose(got["pooled"], expected["pooled"], atol=1e-6)
    padded = recorder.reports[-1]
    assert (padded.positions, padded.padding_positions) == (48, 48 - 45)


def test_padding_stays_under_the_ceiling_and_passed_over_requests_keep_their_place() -> None:
    # Head 10; 40 would make the batch 75% padding, so it waits; the 9 and 11 join the head.
    # Then 40 leads the next batch, and the 38 after it joins (5% padding).
    runner, recorder, _, _ = asyncio.run(queued_behind_a_held_head([10, 40, 9, 11, 38]))
    assert runner.shapes[1:] == [(3, 11), (2, 40)]
    for report in recorder.reports[1:]:
        assert report.padding_positions <= 0.25 * report.positions


def test_a_zero_ceiling_batches_only_equal_lengths() -> None:
    runner, _, _, _ = asyncio.run(queued_behind_a_held_head([5, 6, 5, 6], max_ratio=0.0))
    assert runner.shapes[1:] == [(2, 5), (2, 6)]


def test_inputs_of_one_request_must_agree_on_their_length() -> None:
    ids = np.ones((1, 5), dtype=np.int64)
    with pytest.raises(InvalidInputError, match="disagree on their variable-length axis"):
        PLAN.length({"input_ids": ids, "attention_mask": np.ones((1, 6), dtype=np.int64)})


arrivals = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=40),  # length
        st.integers(min_value=1, max_value=4),  # samples
        st.floats(min_value=0.0, max_value=0.001),  # gap before it is sent
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=arrivals, max_ratio=st.sampled_from([0.0, 0.25, 1.0]))
def test_any_mix_of_lengths_and_arrivals_gets_what_it_would_alone(
    requests: list[tuple[int, int, float]], max_ratio: float
) -> None:
    async def scenario() -> list[dict[str, np.ndarray]]:
        recorder = Recorder()
        batcher = Batcher(
            "tokens/1", policy(max_ratio, max_batch_size=16), [session()], observer=recorder
        )
        batcher.start()
        futures = []
        for i, (length, samples, gap) in enumerate(requests):
            futures.append(asyncio.ensure_future(batcher.infer(tokens(length, samples, i))))
            await asyncio.sleep(gap)
        results = await asyncio.gather(*futures)
        await batcher.close()
        for report in recorder.reports:
            assert report.padding_positions <= max_ratio * report.positions + 1e-9
        assert sum(r.samples for r in recorder.reports) == sum(s for _, s, _ in requests)
        return results

    results = asyncio.run(scenario())
    for i, ((length, samples, _), got) in enumerate(zip(requests, results, strict=True)):
        expected = alone(tokens(length, samples, i))
        assert got["hidden"].shape == (samples, length, 32)
        np.testing.assert_allclose(got["hidden"], expected["hidden"], atol=1e-5)
        np.testing.assert_allclose(got["pooled"], expected["pooled"], atol=1e-5)


def test_the_plan_is_built_from_the_graphs_dim_names() -> None:
    specs = session()
    plan = build_padding_plan(
        PaddingConfig(inputs={"input_ids": 0, "attention_mask": 0}),
        specs.inputs,
        specs.outputs,
        max_batch_size=8,
    )
    assert plan is not None
    assert [(p.name, p.axis) for p in plan.inputs] == [("input_ids", 1), ("attention_mask", 1)]
    assert plan.outputs == {"hidden": 1}  # shares "sequence"; pooled does not


@pytest.mark.parametrize(
    ("config", "max_batch_size", "message"),
    [
        ({"inputs": {"ids": 0}}, 8, "'ids', which is not an input of the model"),
        ({"inputs": {"input_ids": 0}}, 0, "needs batching"),
        ({"inputs": {"input_ids": 0}, "outputs": {"pooled": 1}}, 8, "not a variable axis"),
        ({"inputs": {"input_ids": 0}, "outputs": {"nope": 1}}, 8, "not an output"),
    ],
)
def test_padding_configs_the_graph_contradicts_fail_the_load(
    config: dict[str, object], max_batch_size: int, message: str
) -> None:
    specs = session()
    with pytest.raises(ModelLoadError, match=message):
        build_padding_plan(
            PaddingConfig.model_validate(config), specs.inputs, specs.outputs, max_batch_size
        )


def test_the_head_is_joined_by_its_nearest_lengths_not_the_next_in_line() -> None:
    # (length, samples), oldest first: the 30 and 29 are next in line but far from the head.
    candidates = [(10, 1), (30, 1), (11, 1), (29, 1), (10, 1)]
    assert sorted(choose_by_length(candidates, limit=3, max_ratio=0.25)) == [0, 2, 4]
    # Without the sample limit the 29 and 30 still stay out: they would make it 60% padding.
    assert sorted(choose_by_length(candidates, limit=10, max_ratio=0.25)) == [0, 2, 4]
    # Led by the 30: the 29 joins, then the 11 (22% padding), but not a 10 as well (33%).
    assert sorted(choose_by_length(candidates[1:], limit=10, max_ratio=0.25)) == [0, 1, 2]
