"""The OpenAPI document's shapes of the v2 protocol (KServe's rest_predict_v2 / Triton's).

These models only describe the API for /docs, client generators and schemathesis: the
handlers build their bodies directly (orjson), and inference is decoded by app.protocol, so
nothing here runs per request. The schema tests check the real responses against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class ErrorBody(BaseModel):
    """Every error: what went wrong and, where there is one, how to fix it."""

    error: str


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a variable dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(
        description="max_batch_size, and the instances with the devices and providers they got"
    )


class ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str = ""


class ModelStatistics(BaseModel):
    """Triton's statistics extension (see its documentation for each field)."""

    model_stats: list[dict[str, Any]]


class ConfigTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    data_type: str = Field(description="Triton's type name: TYPE_FP32, TYPE_INT64, TYPE_STRING...")
    dims: list[int] = Field(description="without the batch axis when max_batch_size > 0")


class ModelConfiguration(BaseModel):
    """Triton's model configuration extension: the version's ModelConfig as JSON."""

    model_config = ConfigDict(extra="allow")

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    instance_group: list[dict[str, Any]]
    dynamic_batching: dict[str, Any] | None = None


class Empty(BaseModel):
    pass


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` when the data follows the JSON header"
    )
    data: list[Any] | None = Field(
        default=None, description="row-major, flat or nested; absent with binary data"
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data`: true to get this output as binary"
    )


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="`timeout` (microseconds), `priority` (1 = highest), `binary_data_output`",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


_MEANINGS = {
    400: "Invalid request: the message says which input or parameter and what was expected",
    401: "Missing bearer token (when BATCHSERVE_API_TOKEN is set)",
    403: "Wrong token, or model control is off",
    404: "No such model or version",
    413: "Request body above BATCHSERVE_MAX_REQUEST_BYTES",
    415: "Content-Type other than application/json or application/octet-stream",
    429: "Queue full; retry after Retry-After seconds",
    500: "The model failed on this request (the runtime's message)",
    503: "Not ready: loading, failed to load, unloaded or shutting down (the reason says)",
    504: "The request's deadline passed while it was queued; it was not computed",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the `{"error": ...}` body."""
    return {code: {"model": ErrorBody, "description": _MEANINGS[code]} for code in codes}
