"""Device workers' engines: one ONNX Runtime session per (model version, device, instance).

Knows nothing of asyncio or queues: it creates sessions on the provider asked for (CPU, CUDA,
TensorRT, OpenVINO, ... by name), checks the providers they really got (falling back to the
CPU only where allowed), warms them up and runs batches synchronously.
"""

from app.runtime.session import InstanceOptions, OnnxInstance, graph_tensor_specs

__all__ = ["InstanceOptions", "OnnxInstance", "graph_tensor_specs"]
