"""The OpenAPI document: FastAPI's routes plus the inference operations.

Inference is served by the plain-ASGI fast path (app.api.infer), which FastAPI never sees.
Its two operations are declared here on a router that is never mounted, only handed to the
schema generator, so /docs, client generators and schemathesis see the whole v2 API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.schemas import InferenceRequest, InferenceResponse, errors

_OCTETS: dict[str, Any] = {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
}
_INFER: dict[str, Any] = {
    "responses": {
        200: {
            "model": InferenceResponse,
            "description": "The outputs; with binary outputs, a JSON header of "
            "Inference-Header-Content-Length bytes, then the tensors' raw little-endian bytes",
            "content": _OCTETS,
        },
        **errors(400, 401, 403, 404, 413, 415, 429, 500, 503, 504),
    },
    "openapi_extra": {
        "requestBody": {"content": _OCTETS},
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Length of the JSON header when binary tensors follow it "
                "(Content-Type application/octet-stream)",
            }
        ],
    },
    "tags": ["inference"],
}

_documented = APIRouter()


@_documented.post("/v2/models/{model_name}/infer", **_INFER)
def infer(model_name: str, request: InferenceRequest) -> InferenceResponse:
    """Run the model's latest ready version on the request's inputs; concurrent requests are
    batched together. `parameters.timeout` (µs) bounds the time queued, `parameters.priority`
    picks the level (1 = highest)."""
    raise AssertionError("documentation only: app.api.infer serves this path")


@_documented.post("/v2/models/{model_name}/versions/{model_version}/infer", **_INFER)
def infer_version(
    model_name: str, model_version: str, request: InferenceRequest
) -> InferenceResponse:
    """As above, on one version of the model."""
    raise AssertionError("documentation only: app.api.infer serves this path")


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the document with the inference operations in it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description="KServe v2 inference protocol, with Triton's binary tensor, "
                "statistics and model repository extensions.",
                routes=[*app.routes, *_documented.routes],
            )
            _drop_unused_422(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_unused_422(document: dict[str, Any]) -> None:
    """FastAPI documents 422 for validation errors; this server answers them 400."""
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
