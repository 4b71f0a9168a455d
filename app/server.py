"""uvicorn's server, adapted to how batchserve starts and stops.

- Once it listens and the models have loaded, one log line gives the URL and the models
  (tests and operators wait for it; with port 0 it is how the port is learnt).
- On SIGTERM (or SIGINT) the service starts draining at once: readiness turns 503, new
  inference is refused with 503, batchers stop waiting for fuller batches, and uvicorn stops
  accepting connections while it finishes the requests it has; the process then exits 0
  (uvicorn would re-raise the signal). Past `drain_timeout_s` uvicorn abandons what is left.
  A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from types import FrameType

import uvicorn

from app.service import InferenceService

log = logging.getLogger("batchserve")


class BatchserveServer(uvicorn.Server):
    """uvicorn.Server with the ready line and graceful drain described above."""

    def __init__(self, config: uvicorn.Config, service: InferenceService) -> None:
        super().__init__(config)
        self._service = service
        self._announce_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if not self.should_exit:
            self._announce_task = self._loop.create_task(self._announce())

    async def _announce(self) -> None:
        await self._service.loaded.wait()
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        if self._service.grpc_url is not None:
            url += f" and {self._service.grpc_url}"
        reason = self._service.not_ready_reason()
        state = "ready" if reason is None else f"NOT ready ({reason})"
        log.info("batchserve %s on %s; models: %s", state, url, self._service.models_summary())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            log.warning("second signal %s: exiting now, without draining", sig)
            os._exit(128 + sig)
        log.info("signal %s: draining (new requests get 503; queued ones are served)", sig)
        if self._loop is not None:  # a signal handler must not touch the loop directly
            self._loop.call_soon_threadsafe(self._service.begin_drain)
        super().handle_exit(sig, frame)

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super()._serve(sockets)
        # Drained cleanly: exit 0 rather than re-raise the signal (uvicorn's default), so
        # orchestrators see a clean stop.
        self._captured_signals.clear()
