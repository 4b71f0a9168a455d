"""GET /v2/health/live, /v2/health/ready and /v2 (server metadata): trivial and fast."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import control_of
from app.api.responses import error_response, json_response
from app.api.schemas import Live, Ready, ServerMetadata, errors
from app.dataplane.control import ControlPlane
from app.errors import UnavailableError

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", responses={200: {"model": Live}})
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready", responses={200: {"model": Ready}, **errors(503)})
async def ready(request: Request) -> Response:
    reason = control_of(request).not_ready_reason()
    if reason is not None:
        return error_response(UnavailableError(reason))
    return json_response({"ready": True})


@router.get("/v2", responses={200: {"model": ServerMetadata}})
async def server_metadata() -> Response:
    return json_response(ControlPlane.server_metadata())
