"""POST /v2/models/{m}[/versions/{v}]/infer as plain ASGI: the REST adapter of the data plane.

The hot path skips FastAPI's per-request machinery (dependency resolution, path-parameter
validation, middleware layers): measured on the digits model, that machinery alone cost more
than decoding, batching, inference and encoding together. Everything else (health, metadata,
repository, metrics, docs) stays in FastAPI behind this thin dispatcher.

The adapter only knows HTTP: the headers, the body, JSON and binary tensors, the client's
disconnect. What to do with the request is the data plane's (app.dataplane).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.api.responses import JSON, send_error
from app.dataplane import DataPlane, InferenceRequest, InferenceResponse
from app.errors import (
    ClientGoneError,
    InvalidInputError,
    PayloadTooLargeError,
    ServingError,
    UnsupportedMediaTypeError,
)
from app.protocol.codec import EncodedResponse, decode_infer_request, encode_infer_response
from app.repository import LoadedVersion

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
BINARY_HEADER = b"inference-header-content-length"
#: Content-Types an infer request may carry (none at all is accepted too, as Triton does).
ACCEPTED_TYPES = (b"application/json", b"application/octet-stream", b"text/plain")
#: A request still waiting after this long gets a watcher for its client's disconnect.
#: Arming it for every request cost ~20% of digits' throughput; most answers come sooner.
WATCH_DISCONNECT_AFTER_S = 0.05


class InferenceEndpoint:
    """ASGI app serving inference itself and passing every other request to `app`."""

    def __init__(self, app: ASGIApp, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.app = app
        self._dataplane = dataplane
        self._limit = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                call = RestCall(match[1], match[2], scope, receive, self._limit)
                await self._infer(call, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, call: RestCall, send: Send) -> None:
        try:
            encoded = await self._dataplane.infer(call)
        except ClientGoneError:
            return  # nobody to answer
        except ServingError as exc:
            await send_error(send, exc)
            return
        headers = [(b"content-length", str(len(encoded.content)).encode())]
        if encoded.header_length is None:
            headers.append(JSON)
        else:
            headers += [
                (b"content-type", b"application/octet-stream"),
                (BINARY_HEADER, str(encoded.header_length).encode()),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": encoded.content})


class RestCall:
    """One HTTP inference call, as the data plane's TransportCall."""

    __slots__ = ("_binary_outputs", "_header_length", "_limit", "_receive", "_scope", "model",
                 "version")  # fmt: skip

    def __init__(
        self, model: str, version: str | None, scope: Scope, receive: Receive, limit: int
    ) -> None:
        self.model = model
        self.version = version
        self._scope = scope
        self._receive = receive
        self._limit = limit
        self._header_length: int | None = None
        self._binary_outputs: frozenset[str] = frozenset()

    def announce(self) -> int:
        """Check Content-Type and read Inference-Header-Content-Length; the body's
        announced size (Content-Length, 0 when chunked), refused at once past the limit."""
        content_length = 0
        for name, value in self._scope["headers"]:
            if name == b"content-length" and value.isdigit():
                content_length = int(value)
            elif name == BINARY_HEADER:
                try:
                    self._header_length = int(value)
                except ValueError:
                    raise InvalidInputError(
                        f"Inference-Header-Content-Length must be an integer, got {value!r}"
                    ) from None
            elif name == b"content-type":
                media_type = value.split(b";", 1)[0].strip().lower()
                if media_type not in ACCEPTED_TYPES:
                    raise UnsupportedMediaTypeError(
                        f"Content-Type {value.decode('latin-1')!r} is not accepted: send "
                        "'application/json' (with binary tensors: 'application/octet-stream' "
                        "and Inference-Header-Content-Length)"
                    )
        if content_length > self._limit:
            raise _too_large(content_length, self._limit)
        return content_length

    async def receive(self) -> bytes:
        """The whole body, refused with 413 as soon as it is known to be over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError("the client went away before its request body arrived")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._limit:
                    raise _too_large(size, self._limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def decode(self, body: bytes, target: LoadedVersion) -> InferenceRequest:
        request = decode_infer_request(
            body,
            target.request_inputs,
            target.outputs,
            header_length=self._header_length,
            reject_nonfinite=target.reject_nonfinite,
            input_sets=target.input_sets,
        )
        self._binary_outputs = request.binary_outputs
        return InferenceRequest(
            inputs=request.inputs,
            parameters=request.parameters,
            outputs=request.outputs,
            request_id=request.request_id,
        )

    def encode(self, response: InferenceResponse) -> EncodedResponse:
        return encode_infer_response(
            response.model,
            response.version,
            response.request_id,
            response.outputs,
            response.specs,
            self._binary_outputs,
        )

    def watch_cancel(self, cancel: Callable[[], None]) -> Callable[[], None]:
        """After WATCH_DISCONNECT_AFTER_S, wait for the client's disconnect (after the body,
        only http.disconnect can arrive) and call `cancel` when it comes."""
        loop = asyncio.get_running_loop()
        watcher: asyncio.Future[Message] | None = None

        def on_message(task: asyncio.Future[Message]) -> None:
            if not task.cancelled():
                cancel()

        def arm() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(self._receive())
            watcher.add_done_callback(on_message)

        timer = loop.call_later(WATCH_DISCONNECT_AFTER_S, arm)

        def stop() -> None:
            timer.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()

        return stop


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body of {size} bytes is over the limit of {limit} bytes "
        "(BATCHSERVE_MAX_REQUEST_BYTES); send fewer samples per request"
    )
