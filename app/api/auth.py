"""Bearer-token checks (BATCHSERVE_API_TOKEN) as a small ASGI middleware in front of
everything, so the inference endpoint and FastAPI's routes are covered alike."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.api.responses import send_error
from app.errors import PermissionDeniedError, ServingError, UnauthenticatedError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths that need the API token when one is set; health, /v2 and /metrics stay open.
PROTECTED = ("/v2/models", "/v2/repository")
MODEL_CONTROL = "/v2/repository/models/"


def refusal(headers: list[tuple[bytes, bytes]], token: bytes) -> ServingError | None:
    """None when `headers` carry the right bearer token; else why not (401 or 403)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
                return None
            return PermissionDeniedError("the bearer token is not valid for this server")
    return UnauthenticatedError(
        "this server needs `Authorization: Bearer <token>` (BATCHSERVE_API_TOKEN)"
    )


class BearerAuth:
    """Refuses protected paths without the API token. Load and unload are left to their
    routes when a management token guards them (they check that one themselves)."""

    def __init__(self, app: ASGIApp, token: bytes, management_token_set: bool) -> None:
        self.app = app
        self._token = token
        self._skip_model_control = management_token_set

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(PROTECTED) and not (
                self._skip_model_control and path.startswith(MODEL_CONTROL)
            ):
                refused = refusal(scope["headers"], self._token)
                if refused is not None:
                    await send_error(send, refused)
                    return
        await self.app(scope, receive, send)
