"""The transport-free request path: every transport (REST, gRPC) calls DataPlane.infer
(app.dataplane.dataplane). The package itself holds only the types the transports and
codecs share, so a codec can import them without the server's machinery."""

from app.dataplane.types import InferenceRequest, InferenceResponse, TransportCall

__all__ = ["InferenceRequest", "InferenceResponse", "TransportCall"]
