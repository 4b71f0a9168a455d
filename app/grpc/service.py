"""GRPCInferenceService: the gRPC adapter of the data plane, and Triton's extensions.

Inference goes through the same DataPlane.infer as REST (GrpcCall is its TransportCall);
everything else through the same ControlPlane as REST's routes. Errors leave through
the one table (app.errors) as its gRPC status codes, with REST's messages. A client that
cancels its call cancels the handler, and with it the queued request (never computed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from app.dataplane.control import ControlPlane
from app.dataplane.dataplane import DataPlane
from app.errors import ClientGoneError, InvalidInputError, ServingError, describe
from app.inference import InferenceRequest, InferenceResponse
from app.logs import log_unexpected
from app.protocol.proto import grpc_service_pb2 as pb
from app.protocol.proto import grpc_service_pb2_grpc as pb_grpc
from app.protocol.protobuf import decode_request, encode_response
from app.repository import LoadedVersion

#: The fields of a repository index row that the protobuf message has.
_INDEX = ("name", "version", "state", "reason")


class GrpcCall:
    """One ModelInfer request, as the data plane's TransportCall."""

    __slots__ = ("_deadline", "_message", "model", "version")
    protocol = "grpc"

    def __init__(self, message: pb.ModelInferRequest, deadline: float | None) -> None:
        self._message = message
        self._deadline = deadline
        self.model = message.model_name
        self.version = requested_version(message.model_name, message.model_version)

    def announce(self, target: LoadedVersion) -> int:
        return 0  # the message is in; its tensors' bytes are counted when it is queued

    async def receive(self) -> pb.ModelInferRequest:
        return self._message

    def size(self, body: pb.ModelInferRequest) -> int:
        return sum(len(raw) for raw in body.raw_input_contents)

    def decode(self, body: pb.ModelInferRequest, target: LoadedVersion) -> InferenceRequest:
        request = decode_request(
            body,
            target.request_inputs,
            target.outputs,
            reject_nonfinite=target.reject_nonfinite,
            input_sets=target.input_sets,
        )
        request.deadline = self._deadline
        return request

    def encode(self, response: InferenceResponse) -> pb.ModelInferResponse:
        return encode_response(response)

    def watch_cancel(self, cancel: Callable[[], object]) -> Callable[[], None]:
        return _nothing  # a cancelled call cancels its handler, which cancels the request


def _nothing() -> None:
    pass


def requested_version(model: str, version: str) -> str | None:
    """A message's version string, None for the newest: gRPC carries it as free text, where
    REST's route only matches digits, so anything else is refused in Triton's words."""
    if not version:
        return None
    if not (version.isascii() and version.isdigit()):
        raise InvalidInputError(
            f"failed to get model version from specified version string '{version[:64]}' "
            f"for model '{model[:256]}': versions are positive integers"
        )
    return version


async def abort(context: grpc.aio.ServicerContext, exc: ServingError) -> None:
    """End the call with `exc`'s status code (from the one table) and message."""
    await context.abort(grpc.StatusCode[describe(exc).grpc_code], exc.message)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's gRPC deadline as loop time, if the client set one."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The calls of GRPCInferenceService: inference through the data plane, the rest
    through the control plane, each translated to its protobuf message."""

    def __init__(self, *, dataplane: DataPlane, control: ControlPlane) -> None:
        self._dataplane = dataplane
        self._control = control

    # -- health and metadata --------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._control.not_ready_reason() is None)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._control.server_metadata())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            self._control.model_ready(
                request.name, requested_version(request.name, request.version)
            )
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            metadata = await self._control.model_metadata(
                request.name, requested_version(request.name, request.version)
            )
        except ServingError as exc:
            await abort(context, exc)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
        )

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        try:
            config = await self._control.model_config(
                request.name, requested_version(request.name, request.version)
            )
        except ServingError as exc:
            await abort(context, exc)
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config, ignore_unknown_fields=True)
        return response

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        try:
            version = requested_version(request.name, request.version)
            stats = self._control.statistics(request.name or None, version)
        except ServingError as exc:
            await abort(context, exc)
        response = pb.ModelStatisticsResponse()
        json_format.ParseDict({"model_stats": stats}, response, ignore_unknown_fields=True)
        return response

    # -- the repository extension ---------------------------------------------------------

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        rows = self._control.repository_index(ready=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(**{k: row[k] for k in _INDEX if k in row})
                for row in rows
            ]
        )

    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        try:
            await self._control.load(request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            await self._control.unload(request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # -- inference ------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        try:
            response: pb.ModelInferResponse = await self._dataplane.infer(
                GrpcCall(request, deadline_of(context))
            )
        except ServingError as exc:
            await abort(context, exc)
        return response

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in the order they complete, each with its request's
        id; a failed request's response carries the error instead, and the stream goes on.
        Ending the stream (or cancelling it) drops the requests still queued."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        deadline = deadline_of(context)

        async def serve(message: Any) -> None:
            try:
                answer = await self._dataplane.infer(GrpcCall(message, deadline))
                await answers.put(pb.ModelStreamInferResponse(infer_response=answer))
            except ClientGoneError:
                pass
            except ServingError as exc:
                failed = pb.ModelInferResponse(
                    model_name=message.model_name, model_version=message.model_version,
                    id=message.id,
                )  # fmt: skip
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
                )

        async def read() -> None:
            try:
                async for message in requests:
                    task = asyncio.create_task(serve(message))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
            except Exception as exc:
                log_unexpected(exc, "a gRPC inference stream")
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
