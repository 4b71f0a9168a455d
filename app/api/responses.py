"""Responses: JSON bodies through orjson, and errors as `{"error": "..."}`.

Every error leaves the REST side through `error_parts`, whether from a FastAPI route
(`error_response`) or the plain-ASGI inference path (`send_error`): the status comes from
app.errors' table, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi.responses import Response

from app.errors import ServingError, UnauthenticatedError, describe, retry_after_s

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = (b"content-type", b"application/json")


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def error_parts(exc: ServingError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and extra headers (Retry-After on 429, the challenge on 401) of the
    response to `exc`."""
    headers = []
    retry_after = retry_after_s(exc)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if isinstance(exc, UnauthenticatedError):
        headers.append((b"www-authenticate", b'Bearer realm="batchserve"'))
    return describe(exc).http_status, error_body(exc.message), headers


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(exc: ServingError) -> Response:
    """The FastAPI response to `exc`."""
    status, body, headers = error_parts(exc)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={name.decode(): value.decode() for name, value in headers},
    )


async def send_error(send: Send, exc: ServingError, close: bool = False) -> None:
    """Answer `exc` on a plain ASGI connection; `close` the connection after it (a large
    request body left unread is not worth receiving only to discard it)."""
    status, body, headers = error_parts(exc)
    if close:
        headers.append((b"connection", b"close"))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), JSON, *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
