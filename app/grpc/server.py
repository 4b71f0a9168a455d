"""The gRPC server: GRPCInferenceService and grpc.health.v1 on the REST server's event loop.

One process and one loop serve both transports (so one data plane, one set of batchers),
with gRPC's counterparts of the HTTP front's limits: the message size of
BATCHSERVE_MAX_REQUEST_BYTES, a cap on concurrent streams, and keepalive enforcement
(pings past what is allowed end the connection). Bearer tokens come from the
`authorization` metadata, as on REST. On SIGTERM the health service turns NOT_SERVING at
once, new calls get UNAVAILABLE from the data plane, and the calls in flight are answered
before the batchers close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app.dataplane.access import POLICY, AccessPolicy, Operation
from app.dataplane.control import ControlPlane
from app.dataplane.dataplane import DataPlane
from app.errors import ServingError, describe
from app.grpc.service import InferenceServicer
from app.protocol.proto import grpc_service_pb2_grpc as pb_grpc
from app.service import InferenceService

log = logging.getLogger("batchserve")

SERVICE = "inference.GRPCInferenceService"
#: The operation each GRPCInferenceService method carries, for the access policy.
OPERATIONS = {
    "ServerLive": Operation.SERVER_LIVE,
    "ServerReady": Operation.SERVER_READY,
    "ServerMetadata": Operation.SERVER_METADATA,
    "ModelReady": Operation.MODEL_READY,
    "ModelMetadata": Operation.MODEL_METADATA,
    "ModelConfig": Operation.MODEL_CONFIG,
    "ModelStatistics": Operation.MODEL_STATISTICS,
    "RepositoryIndex": Operation.REPOSITORY_INDEX,
    "RepositoryModelLoad": Operation.MODEL_LOAD,
    "RepositoryModelUnload": Operation.MODEL_UNLOAD,
    "ModelInfer": Operation.INFER,
    "ModelStreamInfer": Operation.INFER,
}


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1: SERVING while the server is ready, NOT_SERVING while it loads or
    drains (for the whole server, "", and for GRPCInferenceService)."""

    def __init__(self, control: ControlPlane) -> None:
        super().__init__()
        self._control = control

    def status(self) -> Any:
        ready = self._control.not_ready_reason() is None
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )

    async def Check(self, request: Any, context: Any) -> Any:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self.status())

    async def update(self) -> None:
        """Tell watchers the status now (after loading, and when draining begins)."""
        for name in ("", SERVICE):
            await self.set(name, self.status())


class BearerTokens(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The token each call's operation needs, from the `authorization` metadata; refused
    calls end UNAUTHENTICATED or PERMISSION_DENIED with REST's message. Calls that are no
    operation (grpc.health.v1, reflection) stay open."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        service, _, method = details.method.lstrip("/").rpartition("/")
        operation = OPERATIONS.get(method) if service == SERVICE else None
        if operation is not None:
            headers = [(str(k).lower().encode(), v.encode() if isinstance(v, str) else v)
                       for k, v in details.invocation_metadata or ()]  # fmt: skip
            refused = self._policy.refusal(POLICY[operation], headers)
            if refused is not None:
                return _refusing(refused, streaming=method == "ModelStreamInfer")
        return await continuation(details)


def _refusing(exc: ServingError, streaming: bool) -> Any:
    code = grpc.StatusCode[describe(exc).grpc_code]

    async def refuse(request: Any, context: Any) -> None:
        await context.abort(code, exc.message)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class InFlight(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts the inference calls in progress, so draining can wait for them to be answered
    while the server still takes calls (health answers NOT_SERVING, inference UNAVAILABLE)."""

    def __init__(self) -> None:
        self.calls = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or method not in ("ModelInfer", "ModelStreamInfer"):
            return handler
        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                with self._counted():
                    return await behaviour(request, context)

            return handler._replace(unary_unary=unary)
        streaming = handler.stream_stream

        async def stream(requests: Any, context: Any) -> Any:
            with self._counted():
                async for answer in streaming(requests, context):
                    yield answer

        return handler._replace(stream_stream=stream)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        self.calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.calls -= 1
            if not self.calls:
                self._idle.set()

    async def idle(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)


class GrpcServer:
    """The gRPC side of one batchserve process."""

    def __init__(
        self,
        service: InferenceService,
        *,
        dataplane: DataPlane,
        control: ControlPlane,
        policy: AccessPolicy,
    ) -> None:
        settings = service.settings
        self._in_flight = InFlight()
        interceptors: list[Any] = [self._in_flight]
        if policy.guards_anything:
            interceptors.insert(0, BearerTokens(policy))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
                # Keepalive enforcement: clients may ping every 10 s at most, even idle.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 2),
                ("grpc.max_connection_idle_ms", 300_000),
                # Two servers on one port is a mistake to report, not a load balancer.
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            InferenceServicer(dataplane=dataplane, control=control), self._server
        )
        self.health = Health(control)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        self.port = self._server.add_insecure_port(f"{host}:{settings.grpc_port}")
        self.url = f"grpc://{host}:{self.port}"

    async def start(self) -> None:
        await self._server.start()
        await self.health.update()

    async def begin_drain(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Answer the inference calls in flight (for at most `grace_s`), still answering
        health (NOT_SERVING) and refusing new inference meanwhile, then stop."""
        await self.health.enter_graceful_shutdown()
        await self._in_flight.idle(grace_s)
        await self._server.stop(1.0)
