"""The transport-free request path: every transport (REST, gRPC) calls `DataPlane.infer`."""

from app.dataplane.dataplane import DataPlane
from app.dataplane.types import InferenceRequest, InferenceResponse, TransportCall

__all__ = ["DataPlane", "InferenceRequest", "InferenceResponse", "TransportCall"]
