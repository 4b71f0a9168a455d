"""Which operation needs which bearer token: one table for REST and gRPC alike.

Health and server metadata stay open for probes and load balancers; everything about models
needs the API token (BATCHSERVE_API_TOKEN) when one is set; load and unload need the
management token (BATCHSERVE_MANAGEMENT_TOKEN) when one is set, else the API token."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from enum import Enum

from app.errors import PermissionDeniedError, ServingError, UnauthenticatedError


class Operation(Enum):
    """Every call the v2 protocol and Triton's extensions define, whatever carries it."""

    SERVER_LIVE = "server live"
    SERVER_READY = "server ready"
    SERVER_METADATA = "server metadata"
    MODEL_READY = "model ready"
    MODEL_METADATA = "model metadata"
    MODEL_CONFIG = "model config"
    MODEL_STATISTICS = "model statistics"
    REPOSITORY_INDEX = "repository index"
    MODEL_LOAD = "model load"
    MODEL_UNLOAD = "model unload"
    INFER = "infer"


class Access(Enum):
    OPEN = "open"
    API = "api"
    MANAGEMENT = "management"


POLICY: dict[Operation, Access] = {
    Operation.SERVER_LIVE: Access.OPEN,
    Operation.SERVER_READY: Access.OPEN,
    Operation.SERVER_METADATA: Access.OPEN,
    Operation.MODEL_READY: Access.API,
    Operation.MODEL_METADATA: Access.API,
    Operation.MODEL_CONFIG: Access.API,
    Operation.MODEL_STATISTICS: Access.API,
    Operation.REPOSITORY_INDEX: Access.API,
    Operation.MODEL_LOAD: Access.MANAGEMENT,
    Operation.MODEL_UNLOAD: Access.MANAGEMENT,
    Operation.INFER: Access.API,
}

_SETTING = {Access.API: "BATCHSERVE_API_TOKEN", Access.MANAGEMENT: "BATCHSERVE_MANAGEMENT_TOKEN"}
_NAME = {Access.API: "the API token", Access.MANAGEMENT: "the management token"}


class AccessPolicy:
    """The tokens a server was started with, and the refusal (or None) for one call."""

    def __init__(self, *, api_token: bytes | None, management_token: bytes | None) -> None:
        self._tokens = {Access.API: api_token, Access.MANAGEMENT: management_token}

    @property
    def guards_anything(self) -> bool:
        return any(self._tokens.values())

    def needed(self, access: Access) -> Access | None:
        """The token an access level asks for on this server (None: no token)."""
        if access is Access.MANAGEMENT and self._tokens[Access.MANAGEMENT] is None:
            access = Access.API  # no management token: the API token guards model control
        if access is Access.OPEN or self._tokens[access] is None:
            return None
        return access

    def refusal(
        self, access: Access, headers: Iterable[tuple[bytes, bytes]]
    ) -> ServingError | None:
        """None when `headers` (lower-case names) carry the token `access` needs; else why
        not: 401 without a bearer token, 403 with another one."""
        needed = self.needed(access)
        if needed is None:
            return None
        token = self._tokens[needed]
        assert token is not None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
                    return None
                return PermissionDeniedError(
                    f"the bearer token is not valid for this call: it needs {_NAME[needed]} "
                    f"({_SETTING[needed]})"
                )
        return UnauthenticatedError(
            f"this call needs `Authorization: Bearer <token>` with {_NAME[needed]} "
            f"({_SETTING[needed]})"
        )
