"""Bearer tokens as a small ASGI middleware in front of everything, so the inference
endpoint and FastAPI's routes are covered alike; which path needs which token comes from the
one access policy (app.dataplane.access) through the operation the path carries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.api.responses import send_error
from app.dataplane.access import POLICY, Access, AccessPolicy, Operation

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MODEL_SUFFIXES = {
    "ready": Operation.MODEL_READY,
    "config": Operation.MODEL_CONFIG,
    "stats": Operation.MODEL_STATISTICS,
    "infer": Operation.INFER,
}
_SERVER_PATHS = {
    "/v2/health/live": Operation.SERVER_LIVE,
    "/v2/health/ready": Operation.SERVER_READY,
    "/v2": Operation.SERVER_METADATA,
}


def rest_operation(path: str) -> Operation | None:
    """The v2 operation a REST path carries; None for what is not one (/metrics, /docs)."""
    if path in _SERVER_PATHS:
        return _SERVER_PATHS[path]
    parts = path.split("/")  # "", "v2", "models" or "repository", ...
    if path.startswith("/v2/repository/models/"):
        return Operation.MODEL_UNLOAD if parts[-1] == "unload" else Operation.MODEL_LOAD
    if path.startswith("/v2/repository"):
        return Operation.REPOSITORY_INDEX
    if not path.startswith("/v2/models"):
        return None
    # /v2/models/M[/versions/V][/suffix], and /v2/models/stats for every model.
    if len(parts) in (5, 7) and parts[-1] in _MODEL_SUFFIXES:
        return _MODEL_SUFFIXES[parts[-1]]
    if parts[3:] == ["stats"]:
        return Operation.MODEL_STATISTICS
    return Operation.MODEL_METADATA


def rest_access(path: str) -> Access:
    """What a path needs: the policy's level for its operation; the rest (/metrics, /docs,
    paths that are no operation and answer 404) is open."""
    operation = rest_operation(path)
    return Access.OPEN if operation is None else POLICY[operation]


class BearerAuth:
    """Refuses, before any route runs, a call without the token its operation needs."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self._policy.refusal(rest_access(scope["path"]), scope["headers"])
            if refused is not None:
                await send_error(send, refused)
                return
        await self.app(scope, receive, send)
