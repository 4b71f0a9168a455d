"""POST /v2/models/{m}[/versions/{v}]/infer: the request path of DESIGN.md.

Admission first (unknown model, not ready, queue full, draining are answered before the
body is read), then decode and validate once, queue, encode. Each request's outcome and
duration are counted exactly once.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import service_of
from app.errors import (
    InferenceFailedError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from app.protocol.json_codec import decode_infer_request, encode_infer_response

router = APIRouter(tags=["inference"])

BINARY_HEADER = "inference-header-content-length"


@router.post("/v2/models/{model_name}/infer")
@router.post("/v2/models/{model_name}/versions/{model_version}/infer")
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    started = time.perf_counter()
    service = service_of(request)
    loaded = service.repository.version(model_name, model_version)
    metrics = service.recorder(model_name, loaded.version)
    metrics.request_started()
    outcome = "error"
    try:
        if service.draining:
            outcome = "rejected"
            raise UnavailableError("server is shutting down; retry on another replica")
        loaded.batcher.check_admission()
        body = await request.body()
        if BINARY_HEADER in request.headers:
            raise InvalidInputError(
                "the binary tensor data extension is not supported yet; send JSON tensors"
            )
        decoded = decode_infer_request(body, loaded.inputs, loaded.outputs)
        outputs = await loaded.batcher.infer(decoded.inputs)
        if decoded.outputs is not None:
            outputs = {name: outputs[name] for name in decoded.outputs}
        content = encode_infer_response(
            model_name, str(loaded.version), decoded.request_id, outputs, loaded.outputs_by_name
        )
        outcome = "success"
        return Response(content, media_type="application/json")
    except InvalidInputError:
        outcome = "invalid"
        raise
    except (OverloadedError, UnavailableError):
        outcome = "rejected"
        raise
    except InferenceFailedError:
        outcome = "error"
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        metrics.request_done(outcome, time.perf_counter() - started)
