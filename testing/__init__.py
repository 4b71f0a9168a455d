"""What the tests and the benchmarks share: a real `batchserve serve` process on 127.0.0.1
(server_process), synthetic ONNX models of known cost and shape (synthetic_models), and
Triton's example models for its clients (triton_models)."""
