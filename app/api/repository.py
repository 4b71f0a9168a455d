"""The v2 model repository extension: POST /v2/repository/index."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import service_of
from app.api.responses import json_response

router = APIRouter(tags=["repository"])


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    """Every model found, with its state and, when it failed, the reason."""
    return json_response(service_of(request).repository.index())
