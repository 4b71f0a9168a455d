"""Device workers' engines: one ONNX Runtime session per (model version, device, instance).

Knows nothing of asyncio or queues: it creates sessions, checks the providers they really
got, warms them up and runs batches synchronously.
"""

from app.runtime.session import OnnxInstance, graph_tensor_specs

__all__ = ["OnnxInstance", "graph_tensor_specs"]
