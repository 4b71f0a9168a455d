"""GET /v2/models/{m}[/versions/{v}] metadata, .../ready, .../config and the statistics:
REST's adapter over the control plane."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import control_of
from app.api.responses import json_response
from app.api.schemas import ModelConfiguration, ModelMetadata, ModelReady, ModelStatistics, errors

#: Every /v2/models route: unknown model or version, not ready, and the token when one is set.
_ERRORS = errors(400, 401, 403, 404, 503)

router = APIRouter(tags=["models"])


@router.get("/v2/models/stats", responses={200: {"model": ModelStatistics}, **_ERRORS})
@router.get("/v2/models/{model_name}/stats", responses={200: {"model": ModelStatistics}, **_ERRORS})
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/stats",
    responses={200: {"model": ModelStatistics}, **_ERRORS},
)
async def model_statistics(
    request: Request, model_name: str | None = None, model_version: str | None = None
) -> Response:
    """Triton's statistics extension: counts and cumulative ns of success, fail, queue,
    compute; inference and execution counts; per batch size."""
    stats = control_of(request).statistics(model_name, model_version)
    return json_response({"model_stats": stats})


@router.get("/v2/models/{model_name}", responses={200: {"model": ModelMetadata}, **_ERRORS})
@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    responses={200: {"model": ModelMetadata}, **_ERRORS},
)
async def model_metadata(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    return json_response(await control_of(request).model_metadata(model_name, model_version))


@router.get("/v2/models/{model_name}/ready", responses={200: {"model": ModelReady}, **_ERRORS})
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    responses={200: {"model": ModelReady}, **_ERRORS},
)
async def model_ready(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    """200 when the model (version) can serve; 404 unknown, 503 not ready, with the reason."""
    return json_response(control_of(request).model_ready(model_name, model_version))


@router.get(
    "/v2/models/{model_name}/config", responses={200: {"model": ModelConfiguration}, **_ERRORS}
)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/config",
    responses={200: {"model": ModelConfiguration}, **_ERRORS},
)
async def model_configuration(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    """Triton's model configuration extension (perf_analyzer and Model Analyzer read it)."""
    return json_response(await control_of(request).model_config(model_name, model_version))
