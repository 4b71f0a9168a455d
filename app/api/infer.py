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
import mmap
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.api.json_pool import decode_in_process
from app.api.responses import JSON, send_error
from app.dataplane.dataplane import DataPlane
from app.errors import (
    ClientGoneError,
    InvalidInputError,
    PayloadTooLargeError,
    ServingError,
    UnsupportedMediaTypeError,
)
from app.inference import InferenceRequest, InferenceResponse
from app.protocol.checks import describe_specs
from app.protocol.codec import (
    EncodedResponse,
    RequestBody,
    decode_infer_request,
    encode_infer_response,
)
from app.protocol.sizes import largest_body_of
from app.repository import LoadedVersion

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
BINARY_HEADER = b"inference-header-content-length"
#: A request still waiting after this long gets a watcher for its client's disconnect.
WATCH_DISCONNECT_AFTER_S = 0.05
#: Bodies announced larger than this are received into one preallocated buffer.
PREALLOCATE_ABOVE = 1024 * 1024
#: A refused request with more of its body than this still unread closes its connection.
UNREAD_BODY_CLOSES = 64 * 1024
#: Content-Types an infer request may carry (none at all is accepted too, as Triton does).
ACCEPTED_TYPES = (b"application/json", b"application/octet-stream", b"text/plain")


class InferenceEndpoint:
    """ASGI app serving inference itself and passing every other request to `app`."""

    def __init__(
        self, app: ASGIApp, dataplane: DataPlane, *, max_request_bytes: int, in_process_bytes: int
    ) -> None:
        self.app = app
        self._dataplane = dataplane
        self._limit = max_request_bytes
        self._in_process = in_process_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        # Positional: this runs once per request, and keyword calls cost measurably more.
        call = RestCall(match[1], match[2], scope, receive, self._limit, self._in_process)
        try:
            encoded = await self._dataplane.infer(call)
        except ClientGoneError:
            return  # nobody to answer
        except ServingError as exc:
            await send_error(send, exc, close=call.unread_bytes > UNREAD_BODY_CLOSES)
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

    protocol = "http"

    __slots__ = ("_cancel", "_header_length", "_in_process", "_limit", "_receive", "_scope",
                 "_timer", "_watcher", "model", "unread_bytes", "version")  # fmt: skip

    def __init__(
        self,
        model: str,
        version: str | None,
        scope: Scope,
        receive: Receive,
        limit: int,
        in_process_bytes: int,
    ) -> None:
        self.model = model
        self.version = version
        self._scope = scope
        self._receive = receive
        self._limit = limit
        self._in_process = in_process_bytes
        self._header_length: int | None = None
        self.unread_bytes = 0  # of the body, as announced
        self._cancel: Callable[[], object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Future[Message] | None = None

    def announce(self, target: LoadedVersion) -> int:
        """Check Content-Type and read Inference-Header-Content-Length; the body's
        announced size (Content-Length, 0 when chunked), refused at once past the server's
        limit or the largest request `target` can accept in this encoding."""
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
        self.unread_bytes = content_length
        if content_length > self._limit:
            raise _too_large(content_length, self._limit)
        binary = self._header_length is not None
        largest = largest_body_of(target.request_inputs, target.max_batch_size, binary)
        if largest is not None and largest < self._limit:
            self._limit = largest  # chunked bodies are held to it while they arrive
            if content_length > largest:
                raise PayloadTooLargeError(
                    f"request body of {content_length} bytes is larger than any request model "
                    f"'{target.model}' accepts: at most {target.max_batch_size} samples of "
                    f"{describe_specs(target.request_inputs)} come to at most {largest} bytes "
                    f"in {'binary tensors' if binary else 'JSON'}"
                )
        return content_length

    async def receive(self) -> RequestBody:
        """The whole body, refused with 413 as soon as it is known to be over the limit. A
        large one of announced length is received into one anonymous memory map: joining
        its chunks at the end would hold the GIL for the copy, and a bytearray of that size
        is zeroed at once (tens of ms of the event loop), a map a page at a time as the
        chunks arrive."""
        announced = self.unread_bytes
        buffer = mmap.mmap(-1, announced) if announced > PREALLOCATE_ABOVE else None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError("the client went away before its request body arrived")
            chunk = message.get("body", b"")
            if chunk:
                if size + len(chunk) > self._limit:
                    raise _too_large(size + len(chunk), self._limit)
                if buffer is not None:  # the parser holds the body to its Content-Length
                    buffer[size : size + len(chunk)] = chunk
                else:
                    chunks.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False):
                self.unread_bytes = 0
                if buffer is not None:
                    return buffer
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def size(self, body: RequestBody) -> int:
        return len(body)

    def decode(self, body: RequestBody, target: LoadedVersion) -> InferenceRequest:
        large_json = self._header_length is None and len(body) > self._in_process
        decode = decode_in_process if large_json else decode_infer_request
        return decode(
            body,
            target.request_inputs,
            target.outputs,
            header_length=self._header_length,
            reject_nonfinite=target.reject_nonfinite,
            input_sets=target.input_sets,
        )

    def encode(self, response: InferenceResponse) -> EncodedResponse:
        return encode_infer_response(
            response.model,
            response.version,
            request_id=response.request_id,
            outputs=response.outputs,
            specs=response.specs,
            binary=response.binary_outputs,
        )

    def watch_cancel(self, cancel: Callable[[], object]) -> Callable[[], None]:
        """Call `cancel` if the client disconnects while its request still waits (after the
        body, only http.disconnect can arrive), watched from WATCH_DISCONNECT_AFTER_S on:
        most answers come sooner, and arming a watcher for every request cost a tiny model
        (digits) a marked share of its throughput."""
        self._cancel = cancel
        self._timer = asyncio.get_running_loop().call_later(WATCH_DISCONNECT_AFTER_S, self._arm)
        return self._stop_watching

    def _arm(self) -> None:
        self._watcher = asyncio.ensure_future(self._receive())
        self._watcher.add_done_callback(self._on_message)

    def _on_message(self, watcher: asyncio.Future[Message]) -> None:
        if not watcher.cancelled() and self._cancel is not None:
            self._cancel()

    def _stop_watching(self) -> None:
        self._cancel = None
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body of {size} bytes is over the limit of {limit} bytes "
        "(BATCHSERVE_MAX_REQUEST_BYTES); send fewer samples per request"
    )
