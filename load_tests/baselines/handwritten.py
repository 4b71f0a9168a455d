"""The endpoint users write by hand: FastAPI + pydantic, one session.run per request.

    BASELINE_MODEL=models/digits/1/model.onnx uvicorn load_tests.baselines.handwritten:app

It speaks just enough of the v2 protocol (JSON tensors) for the load generator: model
metadata, and infer with its inputs and the outputs asked for. No batching, no queue: each
request runs alone, in FastAPI's thread pool (a plain `def` endpoint, as tutorials write it).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(double)": "FP64"}
NUMPY = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64}

session = ort.InferenceSession(
    os.environ.get("BASELINE_MODEL", "models/digits/1/model.onnx"),
    providers=["CPUExecutionProvider"],
)
app = FastAPI()


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class Requested(BaseModel):
    name: str


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]
    outputs: list[Requested] | None = None


def _spec(arg: Any) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": DATATYPES[arg.type], "shape": shape}


@app.get("/v2/models/{name}")
def metadata(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "inputs": [_spec(i) for i in session.get_inputs()],
        "outputs": [_spec(o) for o in session.get_outputs()],
    }


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest) -> dict[str, Any]:
    feeds = {
        t.name: np.array(t.data, dtype=NUMPY[t.datatype]).reshape(t.shape) for t in request.inputs
    }
    wanted = [o.name for o in request.outputs] if request.outputs else None
    chosen = [o for o in session.get_outputs() if wanted is None or o.name in wanted]
    outputs = session.run([o.name for o in chosen], feeds)
    return {
        "model_name": name,
        "id": request.id,
        "outputs": [
            {
                "name": o.name,
                "datatype": DATATYPES[o.type],
                "shape": list(v.shape),
                "data": v.ravel().tolist(),
            }
            for o, v in zip(chosen, outputs, strict=True)
        ],
    }
