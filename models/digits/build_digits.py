"""Rebuild the shipped `digits` model and its held-out test set, reproducibly.

The model is a StandardScaler + MLP (64-256-256-10) trained on scikit-learn's bundled
`load_digits` data (8x8 images, pixel values 0..16), converted to ONNX with skl2onnx with a
dynamic batch axis. It is small enough to commit and real enough to measure batching on.

Run from the repository root (needs the `models` extra: `pip install -e '.[models]'`):

    python models/digits/build_digits.py

Writes, next to this script:
    1/model.onnx          input `input` float32 [batch, 64]; outputs `label` int64 [batch],
                          `probabilities` float32 [batch, 10]
    data/test_x.npy       held-out inputs, float32 [n, 64]
    data/test_y.npy       their labels, int64 [n]
    data/calibration_x.npy  the first 256 training rows, float32 [256, 64]: representative
                          inputs for static quantization, kept apart from the held-out rows
                          its accuracy is measured on (`batchserve optimize quantize`)
    sample_request.json   a KServe v2 request with the first two held-out rows (README's curl)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 0
CALIBRATION_ROWS = 256
HERE = Path(__file__).resolve().parent


def main() -> None:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )

    pipeline = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=300, random_state=SEED),
    )
    pipeline.fit(x_train, y_train)
    sklearn_accuracy = float((pipeline.predict(x_test) == y_test).mean())

    onnx_model = to_onnx(
        pipeline,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset=17,
    )
    onnx_model.doc_string = "digits: StandardScaler + MLP 64-256-256-10 (scikit-learn load_digits)"
    (HERE / "1").mkdir(exist_ok=True)
    (HERE / "1" / "model.onnx").write_bytes(onnx_model.SerializeToString())

    (HERE / "data").mkdir(exist_ok=True)
    np.save(HERE / "data" / "test_x.npy", x_test)
    np.save(HERE / "data" / "test_y.npy", y_test)
    np.save(HERE / "data" / "calibration_x.npy", x_train[:CALIBRATION_ROWS])

    session = ort.InferenceSession(
        str(HERE / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    assert names == ["label", "probabilities"], names
    labels = session.run(["label"], {"input": x_test})[0]
    onnx_accuracy = float((labels == y_test).mean())

    sample = {
        "id": "digits-sample",
        "inputs": [
            {
                "name": "input",
                "shape": [2, 64],
                "datatype": "FP32",
                "data": x_test[:2].reshape(-1).tolist(),
            }
        ],
    }
    (HERE / "sample_request.json").write_text(json.dumps(sample) + "\n")
    print(
        f"held-out rows: {len(y_test)}; accuracy sklearn {sklearn_accuracy:.4f}, "
        f"onnx {onnx_accuracy:.4f}; sample labels {y_test[:2].tolist()}"
    )


if __name__ == "__main__":
    main()
