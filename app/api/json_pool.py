"""Large JSON request bodies are parsed in a process of their own.

The JSON parser and numpy's list conversion hold the GIL for as long as they run (a
noticeable while for a large body), so a worker thread would still stop the event
loop, probes included, for that long. A separate process parses it. The body goes to it
straight from its receive buffer through a pipe (the writes release the GIL), not through
ProcessPoolExecutor, whose pickling copies the body twice with the GIL held; only the
decoded arrays come back pickled. Binary tensors need none of this: they are read in place.
"""

from __future__ import annotations

import atexit
import multiprocessing
import queue
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

from app.errors import InternalError
from app.inference import InferenceRequest
from app.protocol.codec import RequestBody, decode_infer_request

#: Parsing processes: each large body takes one for a fraction of a second.
WORKERS = 2


class ParserGoneError(InternalError):
    """The parsing process died (killed for memory, most likely) while it held a body."""


class _Parser:
    """One parsing process and this side of its pipe."""

    def __init__(self, context: ForkServerContext) -> None:
        self.connection, theirs = context.Pipe()
        self.process = context.Process(
            target=_parse_until_closed, args=(theirs,), name="batchserve-json", daemon=True
        )
        self.process.start()
        theirs.close()

    def parse(self, body: RequestBody, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.connection.send((args, kwargs))
        self.connection.send_bytes(body)
        outcome, value = self.connection.recv()
        if outcome == "raised":
            raise value
        return value

    def close(self) -> None:
        self.connection.close()
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()


def _parse_until_closed(connection: Connection) -> None:
    """A parsing process's life: arguments, then the body, then the outcome, until the
    server closes its end."""
    while True:
        try:
            args, kwargs = connection.recv()
            body = connection.recv_bytes()
        except EOFError:
            return
        try:
            result: tuple[str, Any] = ("returned", decode_infer_request(body, *args, **kwargs))
        except Exception as exc:  # the server raises it as if it had parsed the body itself
            result = ("raised", exc)
        del body
        connection.send(result)


class _Pool:
    """WORKERS parsers, each lent to one calling thread at a time."""

    def __init__(self) -> None:
        # Forked from a fresh fork server that has imported the codec alone: a fork of the
        # server itself (ONNX Runtime's threads) is not safe, and a spawned process would
        # import all of the server again, taking the cores the server needs meanwhile.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["app.protocol.codec"])
        self._idle: queue.SimpleQueue[_Parser] = queue.SimpleQueue()
        self._all = [_Parser(self._context) for _ in range(WORKERS)]
        for parser in self._all:
            self._idle.put(parser)

    def parse(self, body: RequestBody, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        parser = self._idle.get()
        try:
            return parser.parse(body, args, kwargs)
        except (EOFError, OSError) as exc:
            self._all.remove(parser)
            parser.close()
            parser = _Parser(self._context)
            self._all.append(parser)
            raise ParserGoneError(
                f"the process parsing this {len(body)}-byte JSON body died ({exc!r}); "
                "if the server is short of memory, send large tensors as binary data"
            ) from None
        finally:
            self._idle.put(parser)

    def close(self) -> None:
        for parser in self._all:
            parser.close()


_pool: _Pool | None = None
_lock = threading.Lock()


def decode_in_process(body: RequestBody, *args: Any, **kwargs: Any) -> InferenceRequest:
    """decode_infer_request(body, *args, **kwargs) in a parsing process; blocks the calling
    thread (not the GIL) until it is done. Errors are raised here as they would be there."""
    request: InferenceRequest = _processes().parse(body, args, kwargs)
    return request


def _processes() -> _Pool:
    """The parsers, started on first use: a server that never gets a large body never pays
    for them."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = _Pool()
            atexit.register(shutdown)
        return _pool


def shutdown() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()
