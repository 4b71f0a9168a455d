"""batchserve: an inference server for ONNX models speaking the KServe v2 protocol."""

__version__ = "0.1.0"
