"""The endpoint users write by hand: FastAPI + pydantic, one session.run per request.

    BASELINE_MODEL=models/digits/1/model.onnx uvicorn load_tests.baselines.handwritten:app

It speaks just enough of the v2 protocol (JSON tensors) for the load generator: model
metadata, and infer with one input. No batching, no queue: each request runs alone, in
FastAPI's thread pool (a plain `def` endpoint, as tutorials write it).
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


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


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
    tensor = request.inputs[0]
    x = np.array(tensor.data, dtype=NUMPY[tensor.datatype]).reshape(tensor.shape)
    outputs = session.run(None, {tensor.name: x})
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
            for o, v in zip(session.get_outputs(), outputs, strict=True)
        ],
    }
