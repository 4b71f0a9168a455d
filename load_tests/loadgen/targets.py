"""What a benchmark points its load at: a v2 server over HTTP (JSON or binary tensors) or
over gRPC (raw contents), and the generator and session that load it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from load_tests.loadgen import LoadGenerator, Loops, client_session, prepare_request


@dataclass(frozen=True)
class Target:
    #: The server's HTTP URL: REST calls go there, and /metrics is read from it.
    url: str
    binary: bool = False
    #: host:port of its gRPC service; set, the calls go there instead.
    grpc: str | None = None


@asynccontextmanager
async def loading(target: Target, model: str, concurrency: int) -> AsyncIterator[tuple[Loops, Any]]:
    """(generator, session) sending 1-row requests for `model` to `target`."""
    if target.grpc is None:
        async with client_session(concurrency) as http:
            request = await prepare_request(http, target.url, model, rows=1, binary=target.binary)
            yield LoadGenerator(target.url, model, request), http
        return
    from load_tests.loadgen.grpc_client import (
        GrpcLoadGenerator,
        open_channels,
        prepare_grpc_request,
    )

    channels = open_channels(target.grpc, 1)
    try:
        request = await prepare_grpc_request(channels[0], model, rows=1)
        yield GrpcLoadGenerator(request, rows=1), channels
    finally:
        for channel in channels:
            await channel.close()
