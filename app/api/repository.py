"""The v2 model repository extension over the control plane: the index, and load/unload
when model control is on. Tokens are checked in front of the routes (app.api.auth)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import control_of
from app.api.responses import json_response
from app.api.schemas import Empty, RepositoryModel, errors
from app.errors import InvalidInputError

router = APIRouter(tags=["repository"])

_INDEX_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"ready": {"type": "boolean", "default": False}},
                }
            }
        },
    }
}


@router.post(
    "/v2/repository/index",
    responses={200: {"model": list[RepositoryModel]}, **errors(400, 401, 403)},
    openapi_extra=_INDEX_BODY,
)
async def repository_index(request: Request) -> Response:
    """Every model found, with its state and, when it failed, the reason; with
    `{"ready": true}`, only the models ready to serve."""
    body = await request.body()
    return json_response(control_of(request).repository_index(ready=_ready_only(body)))


def _ready_only(body: bytes) -> bool:
    if not body.strip():
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"the index request is not JSON: {exc}") from exc
    ready = parsed.get("ready", False) if isinstance(parsed, dict) else None
    if not isinstance(ready, bool):
        raise InvalidInputError('the index request is {"ready": true|false} or empty')
    return ready


@router.post(
    "/v2/repository/models/{model_name}/load",
    responses={200: {"model": Empty}, **errors(400, 401, 403, 404)},
)
async def load_model(request: Request, model_name: str) -> Response:
    """Load or reload a model: new versions are warmed before they take traffic, and the
    versions they replace finish what they hold. A failed reload keeps the old ones."""
    await control_of(request).load(model_name)
    return json_response({})


@router.post(
    "/v2/repository/models/{model_name}/unload",
    responses={200: {"model": Empty}, **errors(401, 403, 404)},
)
async def unload_model(request: Request, model_name: str) -> Response:
    """Stop serving a model; requests already queued are still answered."""
    await control_of(request).unload(model_name)
    return json_response({})
