"""Domain errors shared by every layer, and the one table that says how each is reported.

Each layer raises these with a message written for the user who has to fix the request or
the model repository. `describe(exc)` finds an error's HTTP status, gRPC status code and
metric outcome by walking its class's MRO, so a subclass is reported as its nearest listed
base and never falls through to 500; the batcher, the codecs and the runtime stay free of
HTTP and gRPC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ServingError(Exception):
    """Base of every error the server reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServingError):
    """The request is malformed or does not fit the model's inputs (HTTP 400)."""


class NotFoundError(ServingError):
    """Unknown model or version (HTTP 404)."""


class UnavailableError(ServingError):
    """The model or server exists but cannot serve now: loading, failed, draining (HTTP 503)."""


class OverloadedError(ServingError):
    """The queue is full; the client should retry after `retry_after_s` (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it could be computed (HTTP 504)."""


class PayloadTooLargeError(ServingError):
    """The request body is over the server's limit (HTTP 413)."""


class UnsupportedMediaTypeError(ServingError):
    """The request body's Content-Type is not one inference accepts (HTTP 415)."""


class UnauthenticatedError(ServingError):
    """The request carries no credentials where they are needed (HTTP 401)."""


class PermissionDeniedError(ServingError):
    """The credentials are wrong, or the operation is switched off (HTTP 403)."""


class InferenceFailedError(ServingError):
    """The runtime failed to execute the model (HTTP 500)."""


class InternalError(ServingError):
    """A bug: the client gets a short message, the log gets the traceback (HTTP 500)."""


class ClientGoneError(ServingError):
    """The client went away (disconnected, cancelled its call) before its answer; nothing
    is sent back, and the request counts as cancelled."""


class ModelLoadError(Exception):
    """A model could not load (bad config, graph or device); fails that model only."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """How one kind of error leaves the server on each transport, and how it is counted."""

    http_status: int
    #: The name of a `grpc.StatusCode` member (a name, so this module needs no grpc).
    grpc_code: str
    #: The `outcome` label of batchserve_requests_total.
    outcome: str


# fmt: off
ERROR_TABLE: dict[type[Exception], ErrorKind] = {
    InvalidInputError:         ErrorKind(400, "INVALID_ARGUMENT",   "invalid"),
    PayloadTooLargeError:      ErrorKind(413, "RESOURCE_EXHAUSTED", "invalid"),
    UnsupportedMediaTypeError: ErrorKind(415, "INVALID_ARGUMENT",   "invalid"),
    UnauthenticatedError:      ErrorKind(401, "UNAUTHENTICATED",    "rejected"),
    PermissionDeniedError:     ErrorKind(403, "PERMISSION_DENIED",  "rejected"),
    NotFoundError:             ErrorKind(404, "NOT_FOUND",          "invalid"),
    # A full queue is UNAVAILABLE on gRPC, as Triton answers it: clients retry that code.
    OverloadedError:           ErrorKind(429, "UNAVAILABLE",        "rejected"),
    UnavailableError:          ErrorKind(503, "UNAVAILABLE",        "rejected"),
    DeadlineExceededError:     ErrorKind(504, "DEADLINE_EXCEEDED",  "timeout"),
    InferenceFailedError:      ErrorKind(500, "INTERNAL",           "error"),
    InternalError:             ErrorKind(500, "INTERNAL",           "error"),
    # 499 is nginx's "client closed request": logged and counted, never sent.
    ClientGoneError:           ErrorKind(499, "CANCELLED",          "cancelled"),
}
# fmt: on
UNEXPECTED = ERROR_TABLE[InternalError]


def describe(exc: BaseException) -> ErrorKind:
    """The table's row for `exc`'s class or its nearest base listed there."""
    for cls in type(exc).__mro__:
        kind = ERROR_TABLE.get(cls)
        if kind is not None:
            return kind
    return UNEXPECTED


def retry_after_s(exc: BaseException) -> int | None:
    """Whole seconds a refused client should wait before retrying (Retry-After), if any:
    a full queue says, and so does any error carrying `retry_after_s`."""
    seconds = getattr(exc, "retry_after_s", None)
    if isinstance(seconds, int | float):
        return max(1, math.ceil(seconds))
    return None
