"""The transport-free request path: every transport (REST, gRPC) calls DataPlane.infer
(app.dataplane.dataplane) and lends it a TransportCall. The request and response types live in
app.inference, below every room."""

from app.dataplane.types import TransportCall

__all__ = ["TransportCall"]
