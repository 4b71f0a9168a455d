"""uvicorn's httptools protocol with the HTTP front's timeouts and limits.

Measured against the alternatives (README "Limits and timeouts"): httptools is uvicorn's
fastest parser but checks nothing, so this subclass adds, per connection:
- a deadline for a request's headers (from connecting, or from its first byte) and for its
  body (longer for larger bodies), checked by the guard's one timer: 408, then closed;
- limits on the headers' total size (431), counted before the parser sees the bytes, so a
  huge header costs nothing to refuse; then, once the headers are complete (no callback
  per header on the hot path), on the request target (414), each header and their count
  (431);
- 503 with Retry-After past the connection limit (probes still served) or when the bodies
  held across all connections would pass their budget.
Each refusal is counted by reason (batchserve_http_refusals_total).

An answer given while the client is still sending (a refusal before its body is read) is
followed by nginx's lingering close: the write side is shut, and what the client still sends
is read and dropped, bounded in bytes and time, before the connection closes. Closed at once,
the client's TCP stack would see a reset and throw the answer away unread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.guard import PROBE_PATHS, ConnectionGuard

log = logging.getLogger("batchserve")

IDLE, HEADERS, BODY, APP = range(4)

#: A lingering connection closes once the client has sent this much more, or after this long
#: in all, or once it has been quiet this long (nginx: 30 s and 5 s, no byte bound).
LINGER_MAX_BYTES = 256 * 1024 * 1024
LINGER_MAX_S = 30.0
LINGER_QUIET_S = 2.0


class Refusal(Exception):
    """Raised in a parser callback: answer `status` with `message`, then close."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class GuardedProtocol(HttpToolsProtocol):
    """One HTTP connection; `guard` is set on the subclass guarded_protocol() makes."""

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = IDLE
        self._since = 0.0  # when the current phase's clock started
        self._header_bytes = 0
        self._body_bytes = 0  # of the bodies in progress, counted in the guard's budget
        self._received_body = 0
        self._watched = False
        self._idle = False
        self._refused = False
        #: While lingering: bytes the client may still send before the connection closes.
        self._linger_left: int | None = None
        self._linger_heard = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_until = 0.0

    # -- connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._for_cycles = _CycleTransport(transport, self._close_after_answer)
        if not self.guard.opened(self):
            self._refuse(Refusal(503, "too_many_connections", _TOO_MANY, retry_after=1))
            return
        self._start(HEADERS)
        self._idle = True
        self.guard.idle(self)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self.guard.closed(self, self._body_bytes)
        self._body_bytes = 0
        super().connection_lost(exc)

    def evict(self) -> None:
        self._idle = False
        self.transport.close()

    def _start(self, phase: int) -> None:
        self._phase = phase
        self._since = self.loop.time()
        if phase == HEADERS:
            self._header_bytes = 0

    def _watch(self) -> None:
        if not self._watched:
            self._watched = True
            self.guard.watch(self)

    # -- bytes in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:  # answered: dropped unread
            self._linger_heard = True
            self._linger_left -= len(data)
            if self._linger_left <= 0:
                self.transport.close()
            return
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._idle:
            self._idle = False
            self.guard.busy(self)
        if self._phase == IDLE:
            self._start(HEADERS)
        if self._phase == HEADERS:
            room = self.guard.limits.max_header_bytes - self._header_bytes
            if len(data) > room:
                # Only what may still be headers reaches the parser; if they have not ended
                # there, they are too large.
                self._feed(data[:room])
                if self._phase == HEADERS and not self._refused:
                    self._refuse(Refusal(431, "header_too_large", self._headers_too_large()))
                if self._refused:
                    return
                data = data[room:]
            else:
                self._header_bytes += len(data)
        self._feed(data)
        if self._phase in (HEADERS, BODY) and not self._refused:
            self._watch()

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Refusal):
                self._refuse(exc.__context__)
            else:
                raise
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != HEADERS:  # a pipelined request
            self._start(HEADERS)

    def on_headers_complete(self) -> None:
        guard = self.guard
        limits = guard.limits
        if len(self.url) > limits.max_url_bytes:  # the total bound kept it below 64 KiB
            raise Refusal(414, "url_too_long", f"the request target is over "
                          f"{limits.max_url_bytes} bytes (BATCHSERVE_MAX_URL_BYTES)")  # fmt: skip
        if len(self.headers) > limits.max_header_count:
            raise Refusal(431, "too_many_headers", f"more than {limits.max_header_count} "
                          "headers (BATCHSERVE_MAX_HEADER_COUNT)")  # fmt: skip
        length, chunked, line = 0, False, limits.max_header_line_bytes
        for name, value in self.headers:
            if len(name) + len(value) > line:
                raise Refusal(431, "header_too_large", f"a header is over {line} bytes "
                              "(BATCHSERVE_MAX_HEADER_LINE_BYTES)")  # fmt: skip
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if guard.over_api_limit() and not _is_probe(self.url):
            raise Refusal(503, "too_many_connections", _TOO_MANY, retry_after=1)
        if length and guard.pending_body_bytes + length > limits.max_pending_body_bytes:
            raise Refusal(503, "body_budget", _BODIES, retry_after=1)
        super().on_headers_complete()
        self.cycle.transport = self._for_cycles  # type: ignore[assignment]
        self._body_bytes += length
        guard.pending_body_bytes += length
        if length or chunked:
            self._start(BODY)
            self._received_body = 0
        else:
            self._phase = APP

    def on_body(self, body: bytes) -> None:
        if self.cycle.response_complete:  # answered before its body was read: discarded
            return
        self._received_body += len(body)
        if self._received_body > self._body_bytes:  # chunked: counted as it comes
            extra = self._received_body - self._body_bytes
            self._body_bytes += extra
            self.guard.pending_body_bytes += extra
            if self.guard.pending_body_bytes > self.guard.limits.max_pending_body_bytes:
                raise Refusal(503, "body_budget", _BODIES, retry_after=1)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle.response_complete and not self.pipeline:  # answered before its body
            self._rest()
        else:
            self._phase = APP

    def on_response_complete(self) -> None:
        if not self.pipeline:  # nothing else in flight on this connection
            self.guard.pending_body_bytes -= self._body_bytes
            self._body_bytes = 0
        if self._linger_left is not None:  # no keep-alive, nothing more to parse
            self.server_state.total_requests += 1
            return
        super().on_response_complete()
        if self._phase == APP and not self.pipeline:  # else its body is still arriving
            self._rest()

    def _rest(self) -> None:
        """Between requests: idle, which a new client's connection may take the place of."""
        self._phase = IDLE
        if not self.transport.is_closing():
            self._idle = True
            self.guard.idle(self)

    # -- late, refused --------------------------------------------------------------------

    def overdue(self, now: float) -> bool:
        """The guard's timer asks: True (stop asking) once this connection is late (it is
        answered 408 and closed) or waits for nothing."""
        limits = self.guard.limits
        if self._refused:
            return True
        if self._phase == HEADERS:
            late = now > self._since + limits.header_timeout_s
            reason, message = (
                "header_timeout",
                (
                    f"the request's headers did not arrive within {limits.header_timeout_s:g} s "
                    "(BATCHSERVE_HEADER_TIMEOUT_S)"
                ),
            )
        elif self._phase == BODY:
            allowed = limits.body_timeout_s + self._received_body / limits.min_body_bytes_per_s
            late = now > self._since + allowed
            reason, message = (
                "body_timeout",
                (
                    f"the request body did not arrive in time: {self._received_body} bytes in "
                    f"{now - self._since:.0f} s (BATCHSERVE_BODY_TIMEOUT_S, "
                    "BATCHSERVE_MIN_BODY_BYTES_PER_S)"
                ),
            )
        else:
            self._watched = False
            return True
        if not late:
            return False
        self._watched = False
        self._refuse(Refusal(408, reason, message))
        return True

    def _headers_too_large(self) -> str:
        return (
            f"the request line and headers are over {self.guard.limits.max_header_bytes} bytes "
            "(BATCHSERVE_MAX_HEADER_BYTES)"
        )

    def _refuse(self, refusal: Refusal) -> None:
        """Answer `refusal` (unless a response is under way) and close the connection:
        lingering where the client may still be sending its request, at once where it was
        too slow (408) or one connection too many (lingering would hold it longer)."""
        if self._refused:
            return
        self._refused = True
        self.guard.count(refusal.reason)
        self.guard.unwatch(self)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            body = orjson.dumps({"error": refusal.message})
            head = [STATUS_LINE[refusal.status], b"content-type: application/json\r\n",
                    b"content-length: ", str(len(body)).encode(), b"\r\n",
                    b"connection: close\r\n"]  # fmt: skip
            if refusal.retry_after:
                head.append(b"retry-after: %d\r\n" % refusal.retry_after)
            self.transport.write(b"".join([*head, b"\r\n", body]))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app stops reading this request
            cycle.message_event.set()
        if refusal.status == 408 or refusal.reason == "too_many_connections":
            self.transport.close()
        else:
            self._linger()

    # -- lingering close ------------------------------------------------------------------

    def _close_after_answer(self) -> None:
        """The app's answer went out with `connection: close`: linger if the request's body
        is still arriving, else close."""
        if self._phase == BODY:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Shut the write side (the answer is sent first), then drop what arrives until
        the client closes or a LINGER_* bound is reached."""
        transport = self.transport
        if self._linger_left is not None or transport.is_closing():
            return
        self._linger_left = LINGER_MAX_BYTES
        self._linger_until = self.loop.time() + LINGER_MAX_S
        self.guard.unwatch(self)
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # flow control may have paused it for a full buffer
        self._linger_timer = self.loop.call_later(LINGER_QUIET_S, self._linger_check)

    def _linger_check(self) -> None:
        if not self._linger_heard or self.loop.time() >= self._linger_until:
            self.transport.close()
            return
        self._linger_heard = False
        self._linger_timer = self.loop.call_later(LINGER_QUIET_S, self._linger_check)


class _CycleTransport:
    """The transport a request's response cycle writes to: the connection's own, but its
    close() is the protocol's (which may linger)."""

    __slots__ = ("close", "is_closing", "write")

    def __init__(self, transport: asyncio.Transport, close: Any) -> None:
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.close = close


_TOO_MANY = "too many connections (BATCHSERVE_MAX_CONNECTIONS); retry later"
_BODIES = (
    "too many request bodies are being received at once (BATCHSERVE_MAX_PENDING_BODY_BYTES); "
    "retry later"
)


def _is_probe(url: bytes) -> bool:
    path = httptools.parse_url(url).path.decode("latin-1")
    return path.startswith(PROBE_PATHS) or path == "/v2"


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedProtocol]:
    """The protocol class uvicorn's Config(http=...) takes, bound to `guard`."""
    return type("BatchserveHttpProtocol", (GuardedProtocol,), {"guard": guard})
