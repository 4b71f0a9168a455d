"""The property that guards the batcher (DESIGN.md): through the real digits model on two
ONNX Runtime workers, every request of any concurrent mix gets exactly its own rows back,
bit-identical to running it alone; none lost, none duplicated, none swapped."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.batching import Batcher, BatchingPolicy, BatchObserver, BatchReport
from app.runtime import OnnxInstance
from tests.conftest import DIGITS_ONNX

MAX_BATCH = 64


class SampleCounter(BatchObserver):
    """Counts the samples and requests the workers really executed."""

    def __init__(self) -> None:
        self.samples = 0
        self.requests = 0

    def batch_executed(self, report: BatchReport) -> None:
        self.samples += report.samples
        self.requests += report.requests


@functools.cache
def instances() -> tuple[OnnxInstance, OnnxInstance]:
    return (
        OnnxInstance(DIGITS_ONNX, "cpu", threads=1, index=0),
        OnnxInstance(DIGITS_ONNX, "cpu", threads=1, index=1),
    )


@functools.cache
def pool() -> np.ndarray:
    return np.load(DIGITS_ONNX.parents[1] / "data" / "test_x.npy")


requests = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=MAX_BATCH),  # samples in the request
        st.integers(min_value=0, max_value=pool().shape[0] - 1),  # where its rows start
        st.floats(min_value=0.0, max_value=0.002),  # gap before it is sent
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=requests, delay_ms=st.sampled_from([0.0, 1.0]))
def test_concurrent_requests_get_exactly_their_own_outputs(
    requests: list[tuple[int, int, float]], delay_ms: float
) -> None:
    data = pool()
    alone = instances()[0]
    inputs = [
        np.take(data, range(start, start + n), axis=0, mode="wrap") for n, start, _ in requests
    ]

    executed = SampleCounter()

    async def send_all() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(
            "digits/1",
            BatchingPolicy(
                max_batch_size=MAX_BATCH, max_queue_size=1000, max_queue_delay_s=delay_ms / 1000
            ),
            instances(),
            observer=executed,
        )
        batcher.start()

        async def send(x: np.ndarray, gap: float) -> dict[str, np.ndarray]:
            await asyncio.sleep(gap)  # shapes the arrival pattern; not synchronisation
            return await batcher.infer({"input": x})

        tasks = []
        for x, (_, _, gap) in zip(inputs, requests, strict=True):
            tasks.append(asyncio.ensure_future(send(x, gap)))
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        await batcher.close()
        return results

    results = asyncio.run(send_all())
    assert len(results) == len(inputs)
    assert executed.requests == len(inputs)  # each computed once: none dropped, none twice
    assert executed.samples == sum(n for n, _, _ in requests)
    for x, got in zip(inputs, results, strict=True):
        expected = alone.run({"input": x})
        assert got.keys() == expected.keys()
        for name, array in expected.items():
            assert got[name].dtype == array.dtype
            assert got[name].shape == array.shape
            assert np.array_equal(got[name], array), f"output {name} differs for a request"
