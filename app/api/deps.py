"""Access to the service from a request, without FastAPI's per-request dependency machinery."""

from __future__ import annotations

from fastapi import Request

from app.service import InferenceService


def service_of(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service
