"""The data plane on its own, over a real repository (digits on ONNX Runtime): a transport of
the test's making hands it calls, as REST and gRPC do.

What it must guarantee whatever the transport: a request that will be refused is refused
before it is read; deadlines and cancellation drop a queued request uncomputed; each call's
outcome is counted once; the outputs are the ones asked for, or the model's default."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from app.dataplane.dataplane import DataPlane
from app.errors import (
    ClientGoneError,
    DeadlineExceededError,
    InternalError,
    OverloadedError,
    UnavailableError,
)
from app.inference import InferenceRequest, InferenceResponse
from app.main import dataplane_of
from app.repository import LoadedVersion
from app.service import InferenceService
from app.settings import Settings
from tests.conftest import MODELS

T = TypeVar("T")
#: Holds every request in the queue: a batch waits a minute for 64 samples.
HELD = (
    "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 60000\npreferred_batch_sizes = [64]\n"
    "max_queue_size = 1\n"
)


@dataclass
class Call:
    """A transport's call: one digits row, with what the data plane did to it recorded."""

    protocol: str = "http"
    model: str = "digits"
    version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None
    deadline: float | None = None
    read: bool = False
    cancel: Callable[[], None] | None = None
    fail_decode: bool = False

    def announce(self, target: LoadedVersion) -> int:
        return 256

    def size(self, body: bytes) -> int:
        return len(body)

    async def receive(self) -> bytes:
        self.read = True
        return b"row"

    def decode(self, body: bytes, target: LoadedVersion) -> InferenceRequest:
        if self.fail_decode:
            raise KeyError("a bug in a codec")
        x = np.load(MODELS / "digits" / "data" / "test_x.npy")[:1]
        return InferenceRequest(
            inputs={"input": x},
            parameters=self.parameters,
            outputs=self.outputs,
            deadline=self.deadline,
        )

    def encode(self, response: InferenceResponse) -> InferenceResponse:
        return response

    def watch_cancel(self, cancel: Callable[[], None]) -> Callable[[], None]:
        self.cancel = cancel
        return lambda: None


def served(
    tmp_path: Path,
    config: str | None,
    scenario: Callable[[DataPlane, InferenceService], Awaitable[T]],
) -> T:
    shutil.copytree(MODELS / "digits", tmp_path / "digits", ignore=shutil.ignore_patterns("*.py"))
    if config is not None:
        (tmp_path / "digits" / "config.toml").write_text(config)

    async def run() -> T:
        service = InferenceService(Settings(model_repository=tmp_path))
        await service.load()
        try:
            return await asyncio.wait_for(scenario(dataplane_of(service), service), 30)
        finally:
            await service.close()

    return asyncio.run(run())


def outcomes(service: InferenceService) -> dict[str, float]:
    counted = {}
    for outcome in ("success", "invalid", "rejected", "timeout", "cancelled", "error"):
        labels = {"model": "digits", "version": "1", "outcome": outcome, "protocol": "http"}
        value = service.metrics.registry.get_sample_value("batchserve_requests_total", labels)
        if value:
            counted[outcome] = value
    return counted


async def until_queued(service: InferenceService, depth: int) -> None:
    """Yield to the loop until the digits queue holds `depth` requests (bounded)."""
    batcher = service.repository.version("digits").batcher
    for _ in range(10_000):
        if batcher.depth == depth:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the queue never held {depth} requests")


def test_outputs_asked_for_else_all(tmp_path: Path) -> None:
    async def scenario(plane: DataPlane, service: InferenceService) -> None:
        everything = await plane.infer(Call())
        assert list(everything.outputs) == ["label", "probabilities"]
        assert everything.outputs["probabilities"].shape == (1, 10)
        only = await plane.infer(Call(outputs=["probabilities"]))
        assert list(only.outputs) == ["probabilities"]
        assert outcomes(service) == {"success": 2}

    served(tmp_path, None, scenario)


def test_default_outputs_serve_requests_that_name_none(tmp_path: Path) -> None:
    async def scenario(plane: DataPlane, service: InferenceService) -> None:
        assert list((await plane.infer(Call())).outputs) == ["label"]
        assert list((await plane.infer(Call(outputs=["probabilities"]))).outputs) == [
            "probabilities"
        ]

    served(tmp_path, 'max_batch_size = 8\ndefault_outputs = ["label"]\n', scenario)


def test_refusals_come_before_the_request_is_read(tmp_path: Path) -> None:
    async def scenario(plane: DataPlane, service: InferenceService) -> None:
        queued = asyncio.ensure_future(plane.infer(Call()))
        await until_queued(service, 1)  # the queue holds one request at most
        refused = Call()
        with pytest.raises(OverloadedError, match="Exceeds maximum queue size"):
            await plane.infer(refused)
        assert not refused.read
        service.draining = True
        draining = Call()
        with pytest.raises(UnavailableError, match="shutting down"):
            await plane.infer(draining)
        assert not draining.read
        assert outcomes(service) == {"rejected": 2}
        queued.cancel()

    served(tmp_path, HELD, scenario)


def test_a_client_that_goes_away_is_dropped_uncomputed(tmp_path: Path) -> None:
    async def scenario(plane: DataPlane, service: InferenceService) -> None:
        call = Call()
        pending = asyncio.ensure_future(plane.infer(call))
        await until_queued(service, 1)
        assert call.cancel is not None
        call.cancel()  # the transport saw its client leave
        with pytest.raises(ClientGoneError):
            await pending
        assert service.repository.version("digits").batcher.depth == 0
        assert outcomes(service) == {"cancelled": 1}
        executions = service.metrics.registry.get_sample_value(
            "batchserve_executions_total", {"model": "digits", "version": "1", "device": "cpu"}
        )
        assert executions == 0

    served(tmp_path, HELD, scenario)


@pytest.mark.parametrize("by", ["parameters.timeout", "the transport"])
def test_the_earlier_deadline_drops_a_queued_request(tmp_path: Path, by: str) -> None:
    async def scenario(plane: DataPlane, service: InferenceService) -> None:
        loop = asyncio.get_running_loop()
        call = (
            Call(parameters={"timeout": 20_000}, deadline=loop.time() + 60)
            if by == "parameters.timeout"
            else Call(parameters={"timeout": 60_000_000}, deadline=loop.time() + 0.02)
        )
        with pytest.raises(DeadlineExceededError, match="Request timeout expired"):
            await plane.infer(call)
        assert outcomes(service) == {"timeout": 1}

    served(tmp_path, HELD, scenario)


def test_a_bug_is_a_short_internal_error_counted_once(tmp_path: Path) -> None:
    async def scenario(plane: DataPlane, service: InferenceService) -> None:
        with pytest.raises(InternalError) as failed:
            await plane.infer(Call(fail_decode=True))
        assert "KeyError" not in failed.value.message and "codec" not in failed.value.message
        assert outcomes(service) == {"error": 1}

    served(tmp_path, None, scenario)
