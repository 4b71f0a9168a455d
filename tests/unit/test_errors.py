"""The one error table: every domain error has its HTTP status, gRPC code and outcome, found
along the class's MRO, so a subclass is never reported as a 500."""

from __future__ import annotations

import inspect

import pytest

import app.errors as errors
from app.api.responses import error_parts
from app.errors import (
    ERROR_TABLE,
    InternalError,
    OverloadedError,
    ServingError,
    UnauthenticatedError,
    describe,
)

#: gRPC's status codes (grpc.StatusCode's names, as the gRPC spec lists them).
GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}  # fmt: skip

SERVING_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, ServingError) and cls is not ServingError
]


@pytest.mark.parametrize("cls", SERVING_ERRORS, ids=lambda cls: cls.__name__)
def test_every_domain_error_has_a_row_with_a_real_grpc_code(cls: type[ServingError]) -> None:
    kind = ERROR_TABLE[cls]
    assert kind.grpc_code in GRPC_CODES - {"OK"}
    assert kind.outcome in ("success", "invalid", "rejected", "timeout", "cancelled", "error")
    assert (kind.http_status == 500) == (kind.outcome == "error")


def test_a_subclass_is_reported_as_its_nearest_listed_base() -> None:
    class QueueOfTokensFull(OverloadedError):
        pass

    kind = describe(QueueOfTokensFull("full", retry_after_s=2.5))
    assert (kind.http_status, kind.grpc_code, kind.outcome) == (429, "UNAVAILABLE", "rejected")
    status, _, headers = error_parts(QueueOfTokensFull("full", retry_after_s=2.5))
    assert status == 429 and (b"retry-after", b"3") in headers


def test_anything_else_is_an_internal_error() -> None:
    assert describe(KeyError("x")) == ERROR_TABLE[InternalError]
    assert describe(ServingError("bare base")) == ERROR_TABLE[InternalError]


def test_a_missing_token_is_challenged() -> None:
    status, body, headers = error_parts(UnauthenticatedError("needs a token"))
    assert status == 401 and body == b'{"error":"needs a token"}'
    assert (b"www-authenticate", b'Bearer realm="batchserve"') in headers
