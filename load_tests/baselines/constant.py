"""The HTTP ceiling of the server stack: the same FastAPI/ASGI server answering every infer
request with a constant, prepared response after reading the body.

    uvicorn load_tests.baselines.constant:app

It answers what the load generator checks (digits-shaped metadata and outputs for 1-row
requests), and does no inference: whatever our server reaches is compared to this.
"""

from __future__ import annotations

import os

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

ROWS = int(os.environ.get("BASELINE_ROWS", "1"))
METADATA = orjson.dumps(
    {
        "name": "digits",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
)
RESPONSE = orjson.dumps(
    {
        "model_name": "digits",
        "model_version": "1",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [ROWS], "data": [0] * ROWS}],
    }
)

app = FastAPI()


@app.get("/v2/models/{name}")
async def metadata(name: str) -> Response:
    return Response(METADATA, media_type="application/json")


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    await request.body()
    return Response(RESPONSE, media_type="application/json")


async def asgi(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """The same answers as plain ASGI, without FastAPI: the ceiling of uvicorn itself.

    uvicorn load_tests.baselines.constant:asgi
    """
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()  # type: ignore[operator]
        more = message.get("more_body", False)
    body = METADATA if scope["method"] == "GET" else RESPONSE
    await send(  # type: ignore[operator]
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]
