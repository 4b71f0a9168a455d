"""Response helpers: JSON bodies through orjson, errors as `{"error": "..."}`."""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi.responses import Response

from app.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServingError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from app.protocol.codec import encode_error


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


STATUS = {
    InvalidInputError: 400,
    NotFoundError: 404,
    OverloadedError: 429,
    UnavailableError: 503,
    InferenceFailedError: 500,
    DeadlineExceededError: 504,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        encode_error(message), status_code=status, media_type="application/json", headers=headers
    )


def error_parts(exc: ServingError) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """Status, message and extra headers (Retry-After on 429) of an error response."""
    headers = []
    if isinstance(exc, OverloadedError):
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
    return STATUS.get(type(exc), 500), exc.message, headers


def response_for(exc: ServingError) -> Response:
    status, message, headers = error_parts(exc)
    return error_response(status, message, {k.decode(): v.decode() for k, v in headers})
