"""The side listener: /metrics and the health probes on --metrics-port, from threads of
their own, so a saturated event loop delays neither a scrape nor a probe.

Liveness there still means the event loop is alive: the loop beats a heartbeat a few
times a second, and the listener answers 503 once it has not beaten for `stall_s`."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app

#: How often the loop beats; readiness seen by the side listener lags by at most this.
BEAT_INTERVAL_S = 0.25

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class LoopHeartbeat:
    """The event loop's pulse and its last readiness verdict, readable from any thread.

    `not_ready` runs on the loop at each beat, so it may read loop-owned state freely; the
    probe thread only reads two attributes the loop replaces whole."""

    def __init__(self, *, stall_s: float, not_ready: Callable[[], str | None]) -> None:
        self.stall_s = stall_s
        self._not_ready = not_ready
        self._beat_at = time.monotonic()
        self._not_ready_reason: str | None = "the server is starting"
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._beat(loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def beat_now(self) -> None:
        """Publish readiness at once (on the loop): draining must not wait for a beat."""
        self._not_ready_reason = self._not_ready()
        self._beat_at = time.monotonic()

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self.beat_now()
        self._handle = loop.call_later(BEAT_INTERVAL_S, self._beat, loop)

    def not_live(self) -> str | None:
        """Why the loop counts as wedged, or None while it beats."""
        silent_s = time.monotonic() - self._beat_at
        if silent_s < self.stall_s:
            return None
        return (
            f"the event loop has not run for {silent_s:.1f} s "
            f"(limit {self.stall_s:g} s, BATCHSERVE_LIVENESS_STALL_S)"
        )

    def not_ready(self) -> str | None:
        return self.not_live() or self._not_ready_reason


def probe_app(heartbeat: LoopHeartbeat, metrics: WSGIApp) -> WSGIApp:
    """/v2/health/live and /v2/health/ready answered from the heartbeat, in the JSON the
    main port answers with; everything else goes to Prometheus' exposition."""
    probes: dict[str, tuple[Callable[[], str | None], bytes]] = {
        "/v2/health/live": (heartbeat.not_live, b'{"live":true}'),
        "/v2/health/ready": (heartbeat.not_ready, b'{"ready":true}'),
    }

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)
        check, ok = probe
        reason = check()
        body = ok if reason is None else orjson.dumps({"error": reason})
        status = "200 OK" if reason is None else "503 Service Unavailable"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the server's log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe in flight must not hold up the process's exit


class SideListener:
    """The WSGI server on --metrics-port, the thread that accepts its connections, and the
    heartbeat its probes read."""

    def __init__(self, *, host: str, port: int, app: WSGIApp, heartbeat: LoopHeartbeat) -> None:
        self.heartbeat = heartbeat
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("SideServer", (_ThreadingServer,), {"address_family": family})
        self._server: WSGIServer = make_server(
            host, port, app, server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="side listener", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop answering (on the loop: the heartbeat stops too)."""
        self.heartbeat.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_side_listener(
    *, host: str, port: int, registry: CollectorRegistry, heartbeat: LoopHeartbeat
) -> SideListener:
    """Serve /metrics and the probes on host:port; the heartbeat must be started on the loop."""
    app = probe_app(heartbeat, make_wsgi_app(registry))
    return SideListener(host=host, port=port, app=app, heartbeat=heartbeat)
