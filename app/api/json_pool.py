"""Large JSON request bodies are parsed in a process of their own.

The JSON parser and numpy's list conversion hold the GIL for as long as they run (measured
here: 0.2 s and 0.08 s for a 63 MB body), so a worker thread would still stop the event
loop, probes included, for that long. A separate process parses it; the caller's thread
only copies the body to it and the arrays back. Binary tensors need none of this: they are
read in place.
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from app.dataplane import InferenceRequest
from app.protocol.codec import decode_infer_request

#: Parsing processes: each large body takes one for a fraction of a second.
WORKERS = 2

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def decode_in_process(body: bytes | bytearray, *args: Any, **kwargs: Any) -> InferenceRequest:
    """decode_infer_request(body, *args, **kwargs) in a parsing process; blocks the calling
    thread (not the GIL) until it is done. Errors are raised here as they would be there."""
    request: InferenceRequest = (
        _processes().submit(decode_infer_request, body, *args, **kwargs).result()
    )
    return request


def _processes() -> ProcessPoolExecutor:
    """The pool, started on first use (a server that never gets a large body never pays
    for it). Its processes fork from a fresh fork server that has imported the codec alone:
    a fork of the server itself (ONNX Runtime's threads) is not safe, and a spawned process
    would import all of the server again, taking the cores the server needs meanwhile."""
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["app.protocol.codec"])
            _pool = ProcessPoolExecutor(WORKERS, mp_context=context)
            atexit.register(shutdown)
        return _pool


def shutdown() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
