"""POST /v2/models/{m}[/versions/{v}]/infer: the request path of DESIGN.md, as plain ASGI.

The hot path skips FastAPI's per-request machinery (dependency resolution, path-parameter
validation, middleware layers): measured on the digits model, that machinery alone cost more
than decoding, batching, inference and encoding together. Everything else (health, metadata,
repository, metrics, docs) stays in FastAPI behind this thin dispatcher.

Admission comes first (unknown model, not ready, queue full and draining are answered
before the body is read), then decode and validate once, queue, encode. Each request's
outcome and duration are counted exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

from app.api.auth import MODEL_CONTROL, PROTECTED, refusal
from app.api.responses import error_parts
from app.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    ServingError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from app.preprocess.text import TextStage, cut_to_own_length
from app.protocol.codec import decode_infer_request, encode_error, encode_infer_response
from app.service import InferenceService

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
BINARY_HEADER = b"inference-header-content-length"
_JSON = [(b"content-type", b"application/json")]

_OUTCOMES: dict[type[ServingError], str] = {
    InvalidInputError: "invalid",
    PayloadTooLargeError: "invalid",
    UnsupportedMediaTypeError: "invalid",
    DeadlineExceededError: "timeout",
    OverloadedError: "rejected",
    UnavailableError: "rejected",
    InferenceFailedError: "error",
}


class ClientDisconnected(Exception):
    """The client went away before its request body arrived."""


class InferenceFastPath:
    """ASGI app serving inference itself and passing every other request to `app`."""

    def __init__(self, app: ASGIApp, service: InferenceService) -> None:
        self.app = app
        self.service = service
        token = service.settings.api_token
        self._token = token.get_secret_value().encode() if token is not None else None
        # Load/unload check the management token themselves when one is set.
        self._own_management_token = service.settings.management_token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if (
                self._token is not None
                and path.startswith(PROTECTED)
                and not (self._own_management_token and path.startswith(MODEL_CONTROL))
            ):
                refused = refusal(scope, self._token)
                if refused is not None:
                    await _respond(send, *refused)
                    return
            if scope["method"] == "POST":
                match = INFER_PATH.match(scope["path"])
                if match is not None:
                    await self._infer(match[1], match[2], scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _infer(
        self, model: str, version: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        arrived = asyncio.get_running_loop().time()
        service = self.service
        try:
            loaded = service.repository.version(model, version)
        except ServingError as exc:
            await _respond(send, *error_parts(exc))
            return
        metrics = service.recorder(model, loaded.version)
        metrics.request_started()
        try:
            if service.draining:
                raise UnavailableError("server is shutting down; retry on another replica")
            header_length, content_length = _request_headers(scope)
            loaded.batcher.check_admission(content_length)
            body = await _read_body(scope, receive, service.settings.max_request_bytes)
            # The version serving now: a reload may have swapped it in while the body arrived.
            loaded = service.repository.version(model, version)
            request = decode_infer_request(
                body,
                loaded.request_inputs,
                loaded.outputs,
                header_length,
                loaded.reject_nonfinite,
                loaded.input_sets,
            )
            timeout_s = _timeout_s(request.parameters, loaded.default_timeout_s)
            priority = _priority(request.parameters)
            inputs = request.inputs
            text = loaded.text
            if text is not None and text.input in inputs:
                texts = inputs[text.input]
                inputs, timeout_s = await _tokenize(
                    text, texts, timeout_s, priority, arrived, receive
                )
            outputs = await _until_done_or_gone(
                loaded.batcher.submit(inputs, timeout_s, priority, arrived), receive
            )
            if request.outputs is not None:
                outputs = {name: outputs[name] for name in request.outputs}
            encoded = encode_infer_response(
                model,
                str(loaded.version),
                request.request_id,
                outputs,
                loaded.outputs_by_name,
                request.binary_outputs,
            )
        except ServingError as exc:
            metrics.request_done(_OUTCOMES.get(type(exc), "error"), time.perf_counter() - started)
            await _respond(send, *error_parts(exc))
            return
        except ClientDisconnected:
            metrics.request_done("cancelled", time.perf_counter() - started)
            return
        except Exception as exc:
            log.exception("unexpected error in model %s's inference", model)
            metrics.request_done("error", time.perf_counter() - started)
            await _respond(send, 500, f"internal server error: {type(exc).__name__}: {exc}")
            return
        except BaseException:  # cancelled: the server is going away under this request
            metrics.request_done("cancelled", time.perf_counter() - started)
            raise
        metrics.request_done("success", time.perf_counter() - started)
        headers = [(b"content-length", str(len(encoded.content)).encode())]
        if encoded.header_length is None:
            headers += _JSON
        else:
            headers += [
                (b"content-type", b"application/octet-stream"),
                (BINARY_HEADER, str(encoded.header_length).encode()),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": encoded.content})


#: Content-Types an infer request may carry (none at all is accepted too, as Triton does).
ACCEPTED_TYPES = (b"application/json", b"application/octet-stream", b"text/plain")


def _request_headers(scope: Scope) -> tuple[int | None, int]:
    """Check Content-Type; return Inference-Header-Content-Length (if any) and the body's
    announced size (Content-Length, 0 when chunked) for the queue's byte bound."""
    header_length = None
    content_length = 0
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            content_length = int(value)
        elif name == BINARY_HEADER:
            try:
                header_length = int(value)
            except ValueError:
                raise InvalidInputError(
                    f"Inference-Header-Content-Length must be an integer, got {value!r}"
                ) from None
        elif name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            if media_type not in ACCEPTED_TYPES:
                raise UnsupportedMediaTypeError(
                    f"Content-Type {value.decode('latin-1')!r} is not accepted: send "
                    "'application/json' (with binary tensors: 'application/octet-stream' and "
                    "Inference-Header-Content-Length)"
                )
    return header_length, content_length


#: A request still waiting after this long gets a watcher for its client's disconnect.
#: Arming it for every request cost ~20% of digits' throughput; most answers come sooner.
WATCH_DISCONNECT_AFTER_S = 0.05


async def _until_done_or_gone(
    result: asyncio.Future[dict[str, Any]], receive: Receive
) -> dict[str, Any]:
    """Await the batcher's answer, unless the client disconnects first: then the request is
    dropped (if still queued, it is never computed) and counted as cancelled."""
    if result.done():
        return result.result()
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[Message] | None = None

    def on_disconnect(task: asyncio.Task[Message]) -> None:
        if not task.cancelled() and not result.done():
            result.cancel()  # after the body, only http.disconnect arrives

    def arm() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_disconnect)

    timer = loop.call_later(WATCH_DISCONNECT_AFTER_S, arm)
    try:
        return await result
    except asyncio.CancelledError:
        if watcher is not None and watcher.done() and not watcher.cancelled():
            raise ClientDisconnected from None
        raise
    finally:
        timer.cancel()
        if watcher is not None and not watcher.done():
            watcher.cancel()


async def _tokenize(
    text: TextStage,
    texts: np.ndarray,
    timeout_s: float | None,
    priority: int | None,
    arrived: float,
    receive: Receive,
) -> tuple[dict[str, np.ndarray], float | None]:
    """The request's token ids from the model's tokenizer step, and what is left of its
    deadline for the model's own queue."""
    deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
    tokens = await _until_done_or_gone(text.submit(texts, timeout_s, priority, arrived), receive)
    return cut_to_own_length(tokens), _remaining(deadline)


def _remaining(deadline: float | None) -> float | None:
    """Seconds left of a deadline (loop time) for the second stage; raise if none are."""
    if deadline is None:
        return None
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise DeadlineExceededError("the request's deadline passed while its text was tokenized")
    return left


def _timeout_s(parameters: dict[str, Any], default_s: float | None) -> float | None:
    """The request's deadline: `parameters.timeout` in microseconds (Triton's convention),
    else the model's or server's default."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return default_s
    if type(timeout) is not int or timeout <= 0:
        raise InvalidInputError(
            f"parameters.timeout must be a positive integer of microseconds, got {timeout!r}"
        )
    return timeout / 1_000_000


def _priority(parameters: dict[str, Any]) -> int | None:
    """`parameters.priority`: 1 is the highest level; 0 or none, the model's default."""
    priority = parameters.get("priority")
    if priority is not None and (type(priority) is not int or priority < 0):
        raise InvalidInputError(
            f"parameters.priority must be a non-negative integer, got {priority!r}"
        )
    return priority


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(int(value), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body of {size} bytes is over the limit of {limit} bytes "
        "(BATCHSERVE_MAX_REQUEST_BYTES); send fewer samples per request"
    )


async def _respond(
    send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = encode_error(message)
    headers = [(b"content-length", str(len(body)).encode()), *_JSON, *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
