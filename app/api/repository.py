"""The v2 model repository extension: the index, and load/unload when model control is on."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.auth import refusal
from app.api.deps import service_of
from app.api.responses import error_response, json_response
from app.api.schemas import Empty, RepositoryModel, errors
from app.errors import InvalidInputError, ModelLoadError, NotFoundError, PermissionDeniedError

router = APIRouter(tags=["repository"])


@router.post(
    "/v2/repository/index",
    responses={200: {"model": list[RepositoryModel]}, **errors(401, 403)},
)
async def repository_index(request: Request) -> Response:
    """Every model found, with its state and, when it failed, the reason."""
    return json_response(service_of(request).repository.index())


def _refused(request: Request) -> Response | None:
    settings = service_of(request).settings
    if not settings.model_control:
        return error_response(
            PermissionDeniedError(
                "model control is off; start the server with BATCHSERVE_MODEL_CONTROL=true"
            )
        )
    if settings.management_token is not None:
        token = settings.management_token.get_secret_value().encode()
        if refusal(request.scope["headers"], token) is not None:
            return error_response(
                PermissionDeniedError("load and unload need the management token")
            )
    return None


@router.post(
    "/v2/repository/models/{model_name}/load",
    responses={200: {"model": Empty}, **errors(400, 401, 403, 404)},
)
async def load_model(request: Request, model_name: str) -> Response:
    """Load or reload a model: new versions are warmed before they take traffic, and the
    versions they replace finish what they hold. A failed reload keeps the old ones."""
    refused = _refused(request)
    if refused is not None:
        return refused
    # "failed to load 'NAME'" is Triton's wording, which its clients' scripts match.
    try:
        await service_of(request).repository.load(model_name)
    except ModelLoadError as exc:
        return error_response(InvalidInputError(f"failed to load '{model_name}': {exc}"))
    except NotFoundError as exc:
        return error_response(NotFoundError(f"failed to load '{model_name}': {exc.message}"))
    return json_response({})


@router.post(
    "/v2/repository/models/{model_name}/unload",
    responses={200: {"model": Empty}, **errors(401, 403, 404)},
)
async def unload_model(request: Request, model_name: str) -> Response:
    """Stop serving a model; requests already queued are still answered."""
    refused = _refused(request)
    if refused is not None:
        return refused
    await service_of(request).repository.unload(model_name)
    return json_response({})
