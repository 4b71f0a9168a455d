"""One inference request's coordination, whatever transport carried it.

`DataPlane.infer` walks DESIGN.md's request path for one call: look the version up, refuse
while draining or when the queue would refuse (before the request is read, where the
transport allows), read and decode it against the version serving once it has arrived, run
the pre-processing stage (the tokenizer) and the model's batcher with the request's
absolute deadline and priority, drop it uncomputed if its client goes away, keep the
outputs it asked for, and count its outcome exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from app.dataplane.classify import classified_spec, top_classes
from app.dataplane.types import Body, Encoded, TransportCall
from app.errors import (
    ClientGoneError,
    InvalidInputError,
    ServingError,
    UnavailableError,
    describe,
)
from app.inference import InferenceRequest, InferenceResponse
from app.logs import log_unexpected
from app.metrics import ModelMetrics, NoMetrics
from app.preprocess.image import ImageStage
from app.preprocess.text import TextStage, cut_to_own_length
from app.repository import LoadedVersion, ModelRepository
from app.tensors import TensorSpec

Outputs = dict[str, np.ndarray]
T = TypeVar("T")
SHUTTING_DOWN = "server is shutting down; retry on another replica"
#: Loads a request waits for at most, should its model be unloaded again to make room
#: before the request resumes.
LOAD_ATTEMPTS = 3


class DataPlane:
    """The transport-free request path over the repository, with each request's metrics
    from `recorder` and new work refused once `draining()` says so."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        recorder: Callable[[str, int], ModelMetrics | NoMetrics],
        draining: Callable[[], bool],
        decode_in_thread_bytes: int,
    ) -> None:
        self._repository = repository
        self._recorder = recorder
        self._draining = draining
        self._decode_in_thread_bytes = decode_in_thread_bytes

    async def infer(self, call: TransportCall[Body, Encoded]) -> Encoded:
        """Serve one call; raises ServingError (already counted) for the transport to send."""
        started = time.perf_counter()
        arrived = asyncio.get_running_loop().time()
        loading = self._repository.load_on_request(call.model)
        if loading is None:
            loaded = self._repository.version(call.model, call.version)
            return await self._infer(call, loaded, started, arrived)
        # Not in memory: read the request (a transport watches for its client going away
        # only once it has), then wait for the model's one load, however many wait for it.
        # Admitted now, it is served even if the server begins to drain during the load.
        if self._draining():
            raise UnavailableError(SHUTTING_DOWN)
        # Waiting, it keeps the model from being evicted between its load and its turn.
        with self._repository.waiting_for(call.model):
            body = await call.receive()
            for _ in range(LOAD_ATTEMPTS):  # unloaded again before this request's turn
                await _until_done_or_gone(loading, call)
                loading = self._repository.load_on_request(call.model)
                if loading is None:
                    break
            loaded = self._repository.version(call.model, call.version)
            return await self._infer(call, loaded, started, arrived, body)

    async def _infer(
        self,
        call: TransportCall[Body, Encoded],
        loaded: LoadedVersion,
        started: float,
        arrived: float,
        received: Body | None = None,
    ) -> Encoded:
        metrics = self._recorder(call.model, loaded.version)
        protocol = call.protocol
        metrics.request_started()
        holder = loaded  # held (never evicted) until answered
        holder.hold(arrived)
        try:
            if received is None and self._draining():
                raise UnavailableError(SHUTTING_DOWN)
            loaded.batcher.check_admission(call.announce(loaded))
            if received is None:
                body = await call.receive()
                # The version serving now: a reload may have swapped it in meanwhile.
                loaded = self._repository.version(call.model, call.version)
                if loaded is not holder:
                    holder.release()
                    holder = loaded
                    holder.hold(arrived)
            else:
                body = received
            if call.size(body) > self._decode_in_thread_bytes:  # the loop keeps answering
                request = await asyncio.to_thread(call.decode, body, loaded)
            else:
                request = call.decode(body, loaded)
            parameters = request.parameters
            priority = _priority(parameters) if parameters else None
            deadline = request.deadline
            if parameters or loaded.default_timeout_s is not None:
                deadline = _deadline(parameters, loaded.default_timeout_s, deadline, arrived)
            inputs = request.inputs
            if loaded.text is not None and loaded.text.input in inputs:
                inputs = await _tokenize(
                    loaded.text, inputs, call=call, metrics=metrics,
                    deadline=deadline, priority=priority, arrived=arrived,
                )  # fmt: skip
            elif loaded.image is not None and loaded.image.input in inputs:
                inputs = await _decode_images(loaded.image, inputs, call=call, metrics=metrics)
            queued = loaded.batcher.submit(
                inputs, deadline=deadline, priority=priority, arrived=arrived
            )
            outputs = await _until_done_or_gone(queued, call)
            encoded = call.encode(_response(loaded, request, outputs))
        except ServingError as exc:
            metrics.request_done(describe(exc).outcome, time.perf_counter() - started, protocol)
            raise
        except Exception as exc:
            metrics.request_done("error", time.perf_counter() - started, protocol)
            raise log_unexpected(exc, f"model {call.model}'s inference") from exc
        except BaseException:  # cancelled: the server is going away under this request
            metrics.request_done("cancelled", time.perf_counter() - started, protocol)
            raise
        finally:
            holder.release()
        metrics.request_done("success", time.perf_counter() - started, protocol)
        return encoded


async def _tokenize(
    text: TextStage,
    inputs: dict[str, np.ndarray],
    *,
    call: TransportCall[Any, Any],
    metrics: ModelMetrics | NoMetrics,
    deadline: float | None,
    priority: int | None,
    arrived: float,
) -> dict[str, np.ndarray]:
    """The pre-processing stage: the request's texts become its token ids, cut to its own
    longest text; timed as stage "tokenize"."""
    began = time.perf_counter()
    queued = text.submit(inputs[text.input], deadline=deadline, priority=priority, arrived=arrived)
    tokens = cut_to_own_length(await _until_done_or_gone(queued, call))
    metrics.stage_done("tokenize", time.perf_counter() - began)
    return tokens


async def _decode_images(
    stage: ImageStage,
    inputs: dict[str, np.ndarray],
    *,
    call: TransportCall[Any, Any],
    metrics: ModelMetrics | NoMetrics,
) -> dict[str, np.ndarray]:
    """The pre-processing stage for images: encoded files become the model's float input,
    decoded in the stage's threads; timed as stage "decode_image"."""
    began = time.perf_counter()
    decoding = asyncio.ensure_future(stage.decode(inputs[stage.input]))
    tensor = await _until_done_or_gone(decoding, call)
    metrics.stage_done("decode_image", time.perf_counter() - began)
    return tensor


def _response(
    loaded: LoadedVersion, request: InferenceRequest, outputs: Outputs
) -> InferenceResponse:
    wanted = request.outputs if request.outputs is not None else loaded.default_outputs
    if wanted is not None:
        outputs = {name: outputs[name] for name in wanted}
    specs: Mapping[str, TensorSpec] = loaded.outputs_by_name
    if request.classification:
        specs = dict(specs)
        for name, count in request.classification.items():
            outputs[name] = top_classes(name, outputs[name], count, loaded.labels.get(name))
            specs[name] = classified_spec(specs[name], count)
    # Positional: this runs once per request, and keyword calls cost measurably more.
    return InferenceResponse(
        loaded.model, str(loaded.version), request.request_id, outputs, specs,
        request.binary_outputs,
    )  # fmt: skip


async def _until_done_or_gone(result: asyncio.Future[T], call: TransportCall[Any, Any]) -> T:
    """Await a queue's answer, unless the client goes away first: then the transport cancels
    `result`, the request leaves the queue uncomputed, and the call counts as cancelled."""
    if result.done():
        return result.result()
    stop_watching = call.watch_cancel(result.cancel)
    try:
        return await result
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and not task.cancelling():  # not this task: the transport
            raise ClientGoneError("the client went away; its request was dropped") from None
        raise
    finally:
        stop_watching()


def _deadline(
    parameters: Mapping[str, Any], default_s: float | None, transport: float | None, arrived: float
) -> float | None:
    """The request's absolute deadline (loop time): `parameters.timeout` in microseconds
    from its arrival (Triton's convention), else the model's or server's default; the
    earlier of that and the transport's own deadline. A wait for a cold load counts."""
    timeout = parameters.get("timeout")
    if timeout is None:
        timeout_s = default_s
    elif type(timeout) is not int or timeout <= 0:
        raise InvalidInputError(
            f"parameters.timeout must be a positive integer of microseconds, got {timeout!r}"
        )
    else:
        timeout_s = timeout / 1_000_000
    if timeout_s is None:
        return transport
    own = arrived + timeout_s
    return own if transport is None else min(transport, own)


def _priority(parameters: Mapping[str, Any]) -> int | None:
    """`parameters.priority`: 1 is the highest level; 0 or none, the model's default."""
    priority = parameters.get("priority")
    if priority is not None and (type(priority) is not int or priority < 0):
        raise InvalidInputError(
            f"parameters.priority must be a non-negative integer, got {priority!r}"
        )
    return priority
