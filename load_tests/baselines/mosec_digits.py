"""Mosec (a Rust HTTP front end with Python workers and dynamic batching) serving digits, for
the comparison in the closing notes of the speed issue. Not a runtime dependency:

    pip install mosec
    python -m load_tests.baselines.mosec_digits --port 8200

POST /inference takes the same v2 JSON request as batchserve and answers v2-shaped outputs,
so load_tests.loadgen can drive both (pointing its endpoint at /inference).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort
from mosec import Server, Worker


class DigitsWorker(Worker):
    """Batches of v2 requests in, one session.run per batch, v2 outputs back."""

    def __init__(self) -> None:
        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ.get("BASELINE_MODEL", "models/digits/1/model.onnx"),
            options,
            providers=["CPUExecutionProvider"],
        )

    def forward(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tensors = [request["inputs"][0] for request in data]
        arrays = [np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]) for t in tensors]
        counts = [a.shape[0] for a in arrays]
        labels = self.session.run(["label"], {"input": np.concatenate(arrays)})[0]
        results, start = [], 0
        for n in counts:
            part = labels[start : start + n]
            start += n
            results.append(
                {
                    "outputs": [
                        {"name": "label", "datatype": "INT64", "shape": [n], "data": part.tolist()}
                    ]
                }
            )
        return results


if __name__ == "__main__":
    server = Server()
    server.append_worker(DigitsWorker, num=1, max_batch_size=64, max_wait_time=1)
    server.run()
