"""The HTTP front's protections across connections: how many are open, which idle one gives
way to a new client, which are late with their headers or body, and how many body bytes
are held at once.

uvicorn's httptools protocol has none of these: a connection that never finishes a request
is never closed, a header of any size is parsed (at a cost that grows with its square), and
open sockets can exhaust the process's files. The per-connection checks are in
protocol.py; the state they share is here. One loop timer checks every connection that is
late, rather than a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.settings import Settings

log = logging.getLogger("batchserve")

#: Connections beyond max_connections that may still reach health, readiness and metrics.
PROBE_RESERVE = 64
#: File descriptors kept back from the open-files limit (models, logs, threads' pipes).
SPARE_FILES = 128
#: Paths served even when the API refuses for too many connections.
PROBE_PATHS = ("/v2/health/", "/metrics")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Timeouts and limits of the HTTP front (Settings' BATCHSERVE_* values)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_bytes_per_s: int = 1024 * 1024
    max_url_bytes: int = 8192
    max_header_line_bytes: int = 8192
    max_header_bytes: int = 65536
    max_header_count: int = 100
    max_connections: int = 4096
    max_pending_body_bytes: int = 512 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int | None = None) -> HttpLimits:
        """The settings' limits; max_connections capped below `open_files`."""
        connections = settings.max_connections
        if open_files is not None:
            connections = min(connections, max(8, open_files - SPARE_FILES - PROBE_RESERVE))
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            min_body_bytes_per_s=settings.min_body_bytes_per_s,
            max_url_bytes=settings.max_url_bytes,
            max_header_line_bytes=settings.max_header_line_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            max_connections=connections,
            max_pending_body_bytes=settings.max_pending_body_bytes,
        )


class Guarded(Protocol):
    """What the guard needs of a connection (protocol.GuardedProtocol)."""

    def overdue(self, now: float) -> bool:
        """True once its headers or body are late (it has answered 408 and closed)."""
        ...

    def evict(self) -> None:
        """Close it: it is idle, and a new connection needs its place."""
        ...


class ConnectionGuard:
    """The state the connections of one server share; see the module docstring."""

    def __init__(self, limits: HttpLimits, on_refusal: Callable[[str], None]) -> None:
        self.limits = limits
        self.count = on_refusal
        self.open = 0
        self.pending_body_bytes = 0
        #: Connections with no request in progress, oldest first (dicts keep their order).
        self._idle: dict[Guarded, None] = {}
        #: Connections waiting for headers or a body, checked by one timer.
        self._timed: set[Guarded] = set()
        self._evicted: set[Guarded] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tick_s = min(1.0, max(0.05, min(limits.header_timeout_s, limits.body_timeout_s) / 4))

    # -- connections ----------------------------------------------------------------------

    def opened(self, connection: Guarded) -> bool:
        """Count a new connection; False when it must be refused. Past max_connections an
        idle connection is closed to make room, where there is one; else the new one may
        still reach the probes, up to PROBE_RESERVE more."""
        self.open += 1
        if self.open <= self.limits.max_connections:
            return True
        if self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            self._evicted.add(oldest)
            self.open -= 1  # gone now: its connection_lost comes later
            self.count("idle_evicted")
            oldest.evict()
            return True
        if self.open <= self.limits.max_connections + PROBE_RESERVE:
            return True
        self.count("too_many_connections")
        return False

    def closed(self, connection: Guarded, body_bytes: int) -> None:
        if connection in self._evicted:
            self._evicted.discard(connection)
        else:
            self.open -= 1
        self.pending_body_bytes -= body_bytes
        self._idle.pop(connection, None)
        self._timed.discard(connection)

    def over_api_limit(self) -> bool:
        return self.open > self.limits.max_connections

    def idle(self, connection: Guarded) -> None:
        self._idle[connection] = None

    def busy(self, connection: Guarded) -> None:
        self._idle.pop(connection, None)

    # -- late headers and bodies ----------------------------------------------------------

    def watch(self, connection: Guarded) -> None:
        """Check `connection` on each tick until it is no longer late-able."""
        self._timed.add(connection)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for connection in list(self._timed):
            if connection.overdue(now):
                self._timed.discard(connection)
        if self._timed:
            self._timer = asyncio.get_running_loop().call_later(self._tick_s, self._tick)

    def unwatch(self, connection: Guarded) -> None:
        self._timed.discard(connection)


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit (each connection is a
    file: the common soft limit of 1,024 is a few idle clients away from refusing every new
    one, probes included); log both; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open files limit raised from %d to the hard limit %d", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("open files limit stays %d (hard %d): %s", soft, hard, exc)
    else:
        log.info("open files limit %d (hard %s)", soft, "unlimited" if hard < 0 else hard)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
