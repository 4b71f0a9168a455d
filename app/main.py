"""create_app(): the ASGI application: the inference fast path in front of a FastAPI app for
everything else, whose lifespan loads the models and drains them at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app import __version__
from app.api import errors, health, metrics, models, openapi, repository
from app.api.infer import InferenceFastPath
from app.service import InferenceService
from app.settings import Settings

log = logging.getLogger("batchserve")


def create_app(settings: Settings | None = None) -> InferenceFastPath:
    """Build the app; models load in the background once it starts, so liveness answers
    while they load and readiness turns 200 only when they have."""
    service = InferenceService(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_port = service.start_metrics_listener()
        if metrics_port is not None:
            log.info("metrics on http://%s:%d/metrics", service.settings.host, metrics_port)
        loading = asyncio.create_task(service.load(), name="load model repository")
        try:
            yield
        finally:
            service.draining = True
            await loading
            await service.close()
            log.info("batchserve stopped: every queued request was served")

    app = FastAPI(
        title="batchserve",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    errors.install(app)
    for module in (health, models, repository, metrics):
        app.include_router(module.router)
    openapi.install(app)
    return InferenceFastPath(app, service)
