"""Bearer-token checks for the API (BATCHSERVE_API_TOKEN), done in the ASGI front so that
both the inference fast path and FastAPI's routes are covered."""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from typing import Any

#: Paths that need the API token when one is set; health, /v2 and /metrics stay open.
PROTECTED = ("/v2/models", "/v2/repository")
MODEL_CONTROL = "/v2/repository/models/"


def refusal(
    scope: MutableMapping[str, Any], token: bytes
) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """None when the request carries the right bearer token; else 401 (none) or 403."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
                return None
            return 403, "the bearer token is not valid for this server", []
    challenge = [(b"www-authenticate", b'Bearer realm="batchserve"')]
    return (
        401,
        "this server needs `Authorization: Bearer <token>` (BATCHSERVE_API_TOKEN)",
        challenge,
    )
