"""Access to the server's planes from a request, without FastAPI's per-request dependency
machinery."""

from __future__ import annotations

from fastapi import Request

from app.dataplane.control import ControlPlane
from app.service import InferenceService


def service_of(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def control_of(request: Request) -> ControlPlane:
    control: ControlPlane = request.app.state.control
    return control
