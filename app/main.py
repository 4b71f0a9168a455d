"""create_app(): the ASGI application: bearer auth (when a token is set), then the inference
endpoint in front of a FastAPI app for everything else, whose lifespan loads the models and
drains them at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI

from app import __version__
from app.api import errors, health, json_pool, metrics, models, openapi, repository
from app.api.auth import BearerAuth
from app.api.infer import ASGIApp, InferenceEndpoint
from app.api.side_listener import LoopHeartbeat, SideListener, start_side_listener
from app.dataplane.access import AccessPolicy
from app.dataplane.control import ControlPlane
from app.dataplane.dataplane import DataPlane
from app.service import InferenceService
from app.settings import Settings

if TYPE_CHECKING:
    from app.grpc.server import GrpcServer

log = logging.getLogger("batchserve")


@dataclass(frozen=True, slots=True)
class Application:
    """What `batchserve serve` runs: the ASGI app, and the parts the server needs."""

    asgi: ASGIApp
    service: InferenceService
    dataplane: DataPlane
    api: FastAPI


def create_app(settings: Settings | None = None) -> Application:
    """Build the app; models load in the background once it starts, so liveness answers
    while they load and readiness turns 200 only when they have."""
    service = InferenceService(settings or Settings())
    settings = service.settings
    control = ControlPlane(
        repository=service.repository,
        metrics=service.metrics,
        not_ready=service.not_ready_reason,
        model_control=settings.model_control,
    )
    policy = access_policy(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        side = _start_side_listener(service)
        grpc_server = (
            await _start_grpc(service, dataplane=dataplane, control=control, policy=policy)
            if settings.grpc_port
            else None
        )

        async def load() -> None:
            await service.load()
            if side is not None:
                side.heartbeat.beat_now()  # ready on the side port as soon as the log says
            if grpc_server is not None:
                await grpc_server.health.update()

        loading = asyncio.create_task(load(), name="load model repository")
        try:
            yield
        finally:
            service.draining = True
            await loading
            if grpc_server is not None:
                await grpc_server.stop(settings.drain_timeout_s)
            await service.close()
            if side is not None:
                side.close()
            json_pool.shutdown()
            log.info("batchserve stopped: every queued request was served")

    api = FastAPI(
        title="batchserve",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    api.state.service = service
    api.state.control = control
    errors.install(api)
    for module in (health, models, repository, metrics):
        api.include_router(module.router)
    openapi.install(api)
    dataplane = dataplane_of(service)
    asgi: ASGIApp = InferenceEndpoint(
        api,
        dataplane,
        max_request_bytes=settings.max_request_bytes,
        in_process_bytes=settings.decode_in_process_bytes,
    )
    if policy.guards_anything:
        asgi = BearerAuth(asgi, policy)
    return Application(asgi=asgi, service=service, dataplane=dataplane, api=api)


def dataplane_of(service: InferenceService) -> DataPlane:
    """The request path over the service's repository, metrics and drain state."""
    return DataPlane(
        repository=service.repository,
        recorder=service.recorder,
        draining=lambda: service.draining,
        decode_in_thread_bytes=service.settings.decode_in_thread_bytes,
    )


def access_policy(settings: Settings) -> AccessPolicy:
    """The tokens the server was started with, as both transports check them."""
    tokens = (settings.api_token, settings.management_token)
    api, management = (t.get_secret_value().encode() if t else None for t in tokens)
    return AccessPolicy(api_token=api, management_token=management)


def _start_side_listener(service: InferenceService) -> SideListener | None:
    """/metrics and the probes on --metrics-port, when it is set, with the loop's heartbeat
    (beaten at once on drain, so readiness there turns 503 with the main port's)."""
    settings = service.settings
    if settings.metrics_port is None:
        return None
    heartbeat = LoopHeartbeat(stall_s=settings.liveness_stall_s, not_ready=service.not_ready_reason)
    heartbeat.start(asyncio.get_running_loop())
    service.on_drain(heartbeat.beat_now)
    side = start_side_listener(
        host=settings.host,
        port=settings.metrics_port,
        registry=service.metrics.registry,
        heartbeat=heartbeat,
    )
    log.info(
        "metrics on http://%s:%d/metrics, with the health probes (/v2/health/live, /ready)",
        settings.host,
        side.port,
    )
    return side


async def _start_grpc(
    service: InferenceService, *, dataplane: DataPlane, control: ControlPlane, policy: AccessPolicy
) -> GrpcServer:
    """Serve gRPC beside REST. Imported only then: the protobuf package `inference` it
    registers would clash, in one process, with tritonclient's copy of it."""
    from app.grpc.server import GrpcServer

    server = GrpcServer(service, dataplane=dataplane, control=control, policy=policy)
    await server.start()
    service.grpc_url = server.url
    draining: set[asyncio.Task[None]] = set()

    def begin_drain() -> None:
        task = asyncio.ensure_future(server.begin_drain())
        draining.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(draining.discard)

    service.on_drain(begin_drain)
    log.info("gRPC on %s", server.url)
    return server
